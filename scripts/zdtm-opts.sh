#!/bin/bash
# zdtm-opts.sh -- of a zdtm test's criu option string, keep the options
# procsnap has with criu's meaning, so the by-hand zdtm runs
# (../shared/zdtm/README.md) give procsnap what the test gives criu.
# It grows with procsnap; ../shared/zdtm/procsnap-opts.sh is the frozen
# baseline of 2026-11-30.
#   usage: scripts/zdtm-opts.sh dump|restore "OPTS..."   -> the kept options
side=$1; shift
out=()
read -r -a a <<<"$*"
i=0
while [ $i -lt ${#a[@]} ]; do
  o=${a[$i]}
  case $side:$o in
    dump:--tcp-established|dump:--link-remap|*:--shell-job|*:-j) out+=("$o") ;;
    dump:--file-locks|dump:-l) out+=("$o") ;;
    restore:--tcp-close) out+=("$o") ;;
    dump:--ghost-limit) out+=("$o" "${a[$((i+1))]}"); i=$((i+1)) ;;
    dump:--ghost-limit=*) out+=("$o") ;;
    *:--external|*:--ghost-limit|*:--cgroup-root) i=$((i+1)) ;;   # an argument follows
    *) ;;
  esac
  i=$((i+1))
done
echo "${out[*]}"
