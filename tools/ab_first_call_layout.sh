#!/bin/bash
# hlayout2's first-call A/B: interleaved processes of tools/first_call_layout.py for main,
# hlayout (whole-step rule, no pre-filter) and hlayout2 (pre-filter); the first two are trees
# exported with `git archive <commit> | tar -x -C /tmp/hlayout2/{main,old}`. Run from the
# worktree root; results appended to $OUT.
out=${OUT:-/tmp/hlayout2/ab_first.txt}
for rep in 1 2 3 4 5; do
  for shape in "32 50 256 float32 LSTM" "32 50 256 float64 LSTM" "16 50 128 float32 LSTM" "16 50 128 float32 FastLSTM"; do
    set -- $shape
    for name in main old new; do
      case $name in main) r=/tmp/hlayout2/main;; old) r=/tmp/hlayout2/old;; new) r=$PWD;; esac
      res=$(python tools/first_call_layout.py $r $1 $2 $3 $4 "" $5)
      echo "$rep|$5 ($1,$2,$3) $4|$name|$res|$(cut -d' ' -f1 /proc/loadavg)" >> $out
    done
  done
done
