#!/usr/bin/env bash
# Regenerates examples/tier1, tier2 and tier3 from the real planner: each folder gets the plan (plan.json, from
# `eksinfer plan --json`) and the tree `eksinfer render` writes for it, and must lint clean.
#   bash scripts/render-examples.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EKSINFER=${EKSINFER:-.venv/bin/eksinfer}

example() {
  local dir=$1
  shift
  mkdir -p "$dir"
  "$EKSINFER" plan "$@" --json >"$dir/plan.json.new"
  mv "$dir/plan.json.new" "$dir/plan.json"
  "$EKSINFER" render "$dir/plan.json" -o "$dir" >/dev/null 2>&1
  "$EKSINFER" lint "$dir" | tail -n 1
}

# Tier 1: Qwen3-32B FP8 on one GPU per replica (the planner picks p5 over g6e here), EKS Auto Mode.
example examples/tier1 -m qwen3-32b --families g6e,p5 --precision fp8 --requests-per-s 2 --shared-prefix-ratio 0.5
# Tier 2: Llama-3.3-70B with tensor parallelism on p5.48xlarge, Karpenter (a custom AMI rules out Auto Mode).
example examples/tier2 -m llama-3.3-70b --families p5 --custom-ami --requests-per-s 4 \
  --input-tokens 2000 --output-tokens 300 --shared-prefix-ratio 0.3
# Tier 3: GLM-5 in BF16 across two p5en nodes per replica (PP 2), prefill/decode disaggregated over NIXL.
example examples/tier3 -m glm-5 --precision bf16 --families p5en --requests-per-s 2 \
  --input-tokens 8000 --output-tokens 500 --shared-prefix-ratio 0.5
