#!/usr/bin/env bash
# freshet vs swiftide 0.32 on the same Markdown corpus, ONNX model, ONNX Runtime library
# and thread count. Builds the swiftide side (outside the repository), generates the
# corpus, runs each side RUNS times alternating, each as its own process under
# /usr/bin/time -v, counts the real tokens of what each embedded, and prints the table.
#
# Knobs (environment): DOCS (1000), RUNS (2), THREADS (2), WORK (/tmp/peer-run),
# CORPUS (/tmp/peer-corpus-$DOCS), FRESHET (the repository's target/debug/freshet),
# PEER_MAX_CHARS (1600, swiftide's ChunkMarkdown maximum in characters), PEER_BATCH_SIZE (unset: swiftide's
# default, 256).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
DOCS="${DOCS:-1000}"
RUNS="${RUNS:-2}"
THREADS="${THREADS:-2}"
WORK="${WORK:-/tmp/peer-run}"
CORPUS="${CORPUS:-/tmp/peer-corpus-$DOCS}"
FRESHET="${FRESHET:-$REPO/target/debug/freshet}"
MODEL_DIR="${MODEL_DIR:-$HOME/.cache/freshet/models/all-MiniLM-L6-v2-int8}"
ORT_DIR="${ORT_DIR:-$HOME/.cache/freshet/onnxruntime}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/swiftide-target}"
PEER="$CARGO_TARGET_DIR/debug/swiftide-peer"

[ -x "$FRESHET" ] || { echo "no freshet binary at $FRESHET (build freshet first)" >&2; exit 1; }
[ -f "$MODEL_DIR/model.onnx" ] || { echo "no model at $MODEL_DIR" >&2; exit 1; }
[ -f "$ORT_DIR/libonnxruntime.so" ] || { echo "no ONNX Runtime at $ORT_DIR" >&2; exit 1; }

# Build. ORT_LIB_LOCATION makes ort-sys's build script (with load-dynamic) skip the
# ONNX Runtime download that swiftide's `fastembed` feature asks for.
echo "== building the swiftide side (dev profile, deps at opt-level 2) in $CARGO_TARGET_DIR" >&2
started=$(date +%s)
ORT_LIB_LOCATION="$ORT_DIR" ORT_PREFER_DYNAMIC_LINK=1 \
  nice -n 19 cargo build --manifest-path "$HERE/Cargo.toml" >&2
echo "   build: $(( $(date +%s) - started )) s" >&2

# Same ONNX Runtime library for both sides, loaded at run time.
export ORT_DYLIB_PATH="$ORT_DIR/libonnxruntime.so"
# Threads: freshet gets `[embedding] threads = $THREADS`; swiftide's fastembed 4.9 gives its
# session available_parallelism() intra-op threads and swiftide's pipeline concurrency is
# num_cpus, so both sides are pinned to the first $THREADS CPUs with taskset.
CPUS="0-$(( THREADS - 1 ))"

"$PEER" gen-corpus "$CORPUS" "$DOCS"
echo "== corpus: $CORPUS ($(find "$CORPUS" -name '*.md' | wc -l) Markdown files, $(du -sh "$CORPUS" | cut -f1))" >&2

rm -rf "$WORK"
mkdir -p "$WORK"

run_freshet() {
  local run=$1
  local cfg="$WORK/freshet-$run.toml"
  cat > "$cfg" <<EOF
data_dir = "$WORK/freshet-data-$run"

[[sources]]
type = "folder"
id = "peer"
path = "$CORPUS"

[embedding]
model_dir = "$MODEL_DIR"
onnxruntime_library = "$ORT_DIR/libonnxruntime.so"
threads = $THREADS
EOF
  echo "== freshet run $run" >&2
  /usr/bin/time -v -o "$WORK/freshet-$run.time" \
    taskset -c "$CPUS" "$FRESHET" --config "$cfg" --json sync > "$WORK/freshet-$run.sync.json"
  "$FRESHET" --config "$cfg" export -o "$WORK/freshet-$run.jsonl"
  "$PEER" count freshet "$MODEL_DIR" "$WORK/freshet-$run.jsonl" > "$WORK/freshet-$run.count.json"
  rm -rf "$WORK/freshet-data-$run"
}

run_swiftide() {
  local run=$1
  echo "== swiftide run $run" >&2
  /usr/bin/time -v -o "$WORK/swiftide-$run.time" \
    taskset -c "$CPUS" "$PEER" index "$CORPUS" "$MODEL_DIR" "$WORK/swiftide-$run.jsonl" \
    > "$WORK/swiftide-$run.timed.json"
  "$PEER" count swiftide "$MODEL_DIR" "$WORK/swiftide-$run.jsonl" > "$WORK/swiftide-$run.count.json"
}

for run in $(seq 1 "$RUNS"); do
  # Alternate which side goes first.
  if (( run % 2 )); then run_freshet "$run"; run_swiftide "$run"
  else run_swiftide "$run"; run_freshet "$run"; fi
done

echo
echo "freshet vs swiftide 0.32.1: $DOCS documents, $(basename "$MODEL_DIR"), ONNX Runtime $(readlink -f "$ORT_DYLIB_PATH" | sed 's/.*\.so\.//'), $THREADS threads (CPUs $CPUS), $(nproc) cores"
echo "swiftide: ChunkMarkdown max ${PEER_MAX_CHARS:-1600} characters, batch size ${PEER_BATCH_SIZE:-256 (its default)}, pipeline concurrency num_cpus; freshet: 256-token chunks, overlap 32, its defaults"
echo "wall = the whole process under /usr/bin/time (model load included; freshet: its embedded store and ledger writes; swiftide: MemoryStorage)"
"$PEER" report "$WORK"
