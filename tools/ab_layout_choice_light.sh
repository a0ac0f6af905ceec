#!/bin/bash
# hchoice's measurement, light variant (picks and re-checks only, no forced layouts; 16 training
# steps where the trial can run -- numpy backend, B <= 16 -- else 2): reps $FROM..$TO.
out=${OUT:-/tmp/hchoice/layout_runs.txt}
main=${MAIN:-/tmp/hchoice/main}
for rep in $(seq ${FROM:-6} ${TO:-10}); do
  for shape in "4 50 256 float32" "16 50 128 float32" "32 50 256 float32" "32 50 512 float32" "32 50 256 float64"; do
    for backend in numpy numba; do
      set -- $shape
      steps=2; if [ $backend = numpy ] && [ $1 -le 16 ]; then steps=16; fi
      res=$(python tools/layout_choice_process.py $PWD $backend $1 $2 $3 $4 0 $steps 2>&1 | tail -1)
      echo "$rep|$backend|$1,$2,$3 $4|branch|$res" >> $out
      res=$(python tools/layout_choice_process.py $main $backend $1 $2 $3 $4 0 1 2>&1 | tail -1)
      echo "$rep|$backend|$1,$2,$3 $4|main|$res" >> $out
    done
  done
done
echo done-light >> $out
