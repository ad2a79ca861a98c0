#!/usr/bin/env bash
# ADAPT as a whole (issue 24): the validation sweep of assets/results/whole/selection_rule.md, as run.
# Two queues side by side (one core each): `commands.sh train` and `commands.sh eval`, then
# `python -m adapt.train.report joint ...` (the table, the picks, the plot).
set -u
W=runs/whole
VAL=(--benchmark world --split validation --seeds 1,2,3,4 --limit 250 --threads 1)
TEST=(--benchmark world --split test --seeds 31,32,33,34,35 --limit 200 --threads 1)  # never used before
T=(--threads 1 --no-bar)

q() {  # run one command, its pid in /tmp/sweep.pids (so a timing benchmark can pause the sweep)
  "$@" & local pid=$!
  echo $pid > /tmp/sweep.$QUEUE.pid; cat /tmp/sweep.*.pid > /tmp/sweep.pids 2>/dev/null
  wait $pid; local rc=$?
  rm -f /tmp/sweep.$QUEUE.pid; cat /tmp/sweep.*.pid > /tmp/sweep.pids 2>/dev/null
  [ $rc -eq 0 ] || echo "FAILED ($rc): $*" >&2
  return $rc
}

train() {  # name objective pairs-folder extra-args...
  local name=$1 obj=$2 pairs=$3; shift 3
  [ -f $W/$name/model/config.json ] && return 0
  q python -m adapt train $obj --out $W/$name --pairs $W/$pairs --steps 200 --batch 8 "${T[@]}" "$@"
}

claim() {  # one worker per run folder when two eval queues share the list: the first mkdir wins
  mkdir -p $W/claims; mkdir $W/claims/$1 2>/dev/null
}

decode() {  # recipe backbone: greedy (with POPE), adapt-tf, adapt-tf at gamma 0.75 (no POPE: see the rule)
  local name=$1 backbone=$2
  if [ ! -f $W/$name/val-greedy/summary.json ] && claim $name-greedy; then
    q python -m adapt eval "${VAL[@]}" --backbone $backbone --method greedy --out $W/$name/val-greedy
  fi
  while [ ! -f $W/$name/val-greedy/summary.json ]; do sleep 20; done
  # the amendment of 20:27 in selection_rule.md: greedy recall more than 1 point below the bar → no ADAPT-TF
  python - "$W" "$name" <<'PY' || return 0
import json, sys
w, name = sys.argv[1:]
recall = lambda r: json.load(open(f"{w}/{r}/val-greedy/summary.json"))["greedy"]["recall"]
sys.exit(0 if recall(name) >= recall("R0") - 0.02 - 0.01 else 1)
PY
  if [ ! -f $W/$name/val-tf/summary.json ] && claim $name-tf; then
    q python -m adapt eval "${VAL[@]}" --backbone $backbone --method adapt-tf --no-pope --out $W/$name/val-tf
  fi
  if [ ! -f $W/$name/val-tf-g075/summary.json ] && claim $name-tf-g075; then
    q python -m adapt eval "${VAL[@]}" --backbone $backbone --method adapt-tf --gamma 0.75 --no-pope --out $W/$name/val-tf-g075
  fi
}

case "${1:-}" in
  train)
    QUEUE=train
    train R2 dpo pairs-world --lr 1e-4 --sft-weight 0
    train R3 dpo pairs-world --lr 1e-4 --sft-weight 1
    train R5 vag-dpo pairs-world --lr 1e-4 --sft-weight 1 --chosen-image original
    train R4 vag-dpo pairs-world --lr 1e-4 --sft-weight 1
    train R7 dpo pairs-omit --lr 1e-4 --sft-weight 1 --world-omitted 1
    train R8 dpo pairs-yesno --lr 1e-4 --sft-weight 1 --world-yesno 1
    train R9 vag-dpo pairs-omit-yesno --lr 1e-4 --sft-weight 1 --chosen-image original --world-omitted 1 --world-yesno 1
    # R6 waits for stage A's pick (rule A), written to $W/stageA.mode by the eval queue
    while [ ! -f $W/stageA.mode ]; do sleep 20; done
    mode=$(cat $W/stageA.mode)
    train R6 vag-dpo pairs-$mode --lr 1e-4 --sft-weight 1 --enhance-mode $mode
    ;;
  eval)
    QUEUE=eval
    decode R0 embedded
    [ -f $W/R0/val-enhanced/summary.json ] || q python -m adapt eval "${VAL[@]}" --no-pope --out $W/R0/val-enhanced \
      --method adapt-tf:enhanced-paper,adapt-tf:enhanced-background,adapt-tf:enhanced-blur,adapt-tf:enhanced-luminance
    [ -f $W/stageA.mode ] || python -m adapt.train.report stage-a --run $W/R0/val-enhanced --out $W/stageA.mode
    decode R1 assets/embedded-vagdpo
    for r in R2 R3 R5 R8 R9 R7 R6 R4; do
      while [ ! -f $W/$r/model/config.json ]; do sleep 20; done
      decode $r $W/$r/model
    done
    ;;
  eval2)  # a second eval queue, from the other end of the list (claims keep the two apart)
    QUEUE=eval2
    for r in R7 R9 R6 R4 R8 R5; do
      while [ ! -f $W/$r/model/config.json ]; do sleep 20; done
      decode $r $W/$r/model
    done
    ;;
  test-base)  # the untuned model's rows of the test table: none depends on a pick but ADAPT-TF's (R0's own)
    QUEUE=test-base
    [ -f $W/test/base/summary.json ] || q python -m adapt eval "${TEST[@]}" --method greedy,adapt-tf,vcd,pai --out $W/test/base
    ;;
  test-opera)
    QUEUE=test-opera
    [ -f $W/test/opera/summary.json ] || q python -m adapt eval "${TEST[@]}" --method opera --out $W/test/opera
    ;;
  test-recipe)  # $2 = recipe folder, $3… = the pick's decoding flags: greedy and that ADAPT-TF decoding, with POPE
    QUEUE=test-$2; r=$2; shift 2
    [ -f $W/test/$r/summary.json ] || q python -m adapt eval "${TEST[@]}" --backbone $W/$r/model --method greedy,adapt-tf "$@" --out $W/test/$r
    ;;
  *) echo "usage: $0 train|eval|eval2|test-base|test-opera|test-recipe R [flags]" >&2; exit 2 ;;
esac
