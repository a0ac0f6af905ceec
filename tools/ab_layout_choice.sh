#!/bin/bash
# hchoice's measurement: 10 fresh processes per shape and backend, this branch (pick, re-check,
# both layouts forced) and main ($MAIN, picks only) alternating. Run from the worktree root.
out=${OUT:-/tmp/hchoice/layout_runs.txt}
main=${MAIN:-/tmp/hchoice/main}
for rep in $(seq 1 ${REPS:-10}); do
  for shape in "4 50 256 float32" "16 50 128 float32" "32 50 256 float32" "32 50 512 float32" "32 50 256 float64"; do
    for backend in numpy numba; do
      set -- $shape
      res=$(python tools/layout_choice_process.py $PWD $backend $1 $2 $3 $4 5 16 2>&1 | tail -1)
      echo "$rep|$backend|$1,$2,$3 $4|branch|$res" >> $out
      res=$(python tools/layout_choice_process.py $main $backend $1 $2 $3 $4 0 1 2>&1 | tail -1)
      echo "$rep|$backend|$1,$2,$3 $4|main|$res" >> $out
    done
  done
done
echo done >> $out
