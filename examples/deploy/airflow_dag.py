"""Airflow DAG: sync the vector index every 15 minutes, then fail the task on errors.

`freshet sync --json` prints one JSON report on stdout (pushed to XCom by BashOperator)
and exits 0 (ok), 3 (completed, some documents failed; listed in the report) or 1
(error; nothing half-done is recorded, the next run retries). max_active_runs=1 keeps
runs from overlapping; freshet's data-directory lock refuses a second writer anyway.
"""

from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

FRESHET = "/usr/local/bin/freshet"
CONFIG = "/etc/freshet/freshet.toml"

with DAG(
    dag_id="freshet_sync",
    description="Keep the RAG vector index fresh",
    schedule=timedelta(minutes=15),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    tags=["rag", "freshet"],
) as dag:
    sync = BashOperator(
        task_id="sync",
        # --wait: queue behind a sync started by hand instead of failing.
        bash_command=f"{FRESHET} sync --config {CONFIG} --json --wait",
        # Exit 3 (some documents failed) is reported but does not fail the DAG run;
        # Airflow skips the task on this code instead.
        skip_on_exit_code=3,
        do_xcom_push=True,
        execution_timeout=timedelta(hours=2),
    )

    verify = BashOperator(
        task_id="verify",
        # Exit 4 means the ledger and the store drifted apart: repair it (the task log
        # keeps what verify found).
        bash_command=f"{FRESHET} verify --config {CONFIG} --json || {FRESHET} verify --config {CONFIG} --repair --json",
        trigger_rule="all_done",
    )

    sync >> verify
