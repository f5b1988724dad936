#!/usr/bin/env bash
# A real single-node Slurm on this machine, for the integration test (Debian bookworm's 22.05).
#   scripts/slurm-local.sh start   install (if needed) and start munged, slurmctld, slurmd; wait for idle
#   scripts/slurm-local.sh stop    cancel jobs, stop only the daemons this script started (by PID)
# Needs root (it installs packages and writes /etc/slurm). State lives in $SLURM_LOCAL_DIR.
set -euo pipefail
DIR=${SLURM_LOCAL_DIR:-/tmp/runner-slurm}
mkdir -p "$DIR"

die() { echo "slurm-local: $*" >&2; exit 1; }

alive() { # PID alive and not a zombie (PID 1 here may reap late)
  local pid=$1
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null
}

install() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null && return 0
  [ "$(id -u)" = 0 ] || die "not root: cannot install slurmctld slurmd slurm-client munge"
  # keep package scripts from starting services
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  rm -f /usr/sbin/policy-rc.d
}

write_config() {
  mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
  chown -R slurm:slurm /var/lib/slurm /var/log/slurm
  cat >/etc/slurm/slurm.conf <<CONF
ClusterName=runnerci
SlurmctldHost=localhost
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=4 RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start_daemon() { # name, command...
  local name=$1; shift
  if alive "$(cat "$DIR/$name.pid" 2>/dev/null || true)"; then return 0; fi
  setsid "$@" >"$DIR/$name.log" 2>&1 < /dev/null &
  echo $! >"$DIR/$name.pid"
}

start() {
  [ "$(id -u)" = 0 ] || die "not root"
  install
  write_config
  [ -f /etc/munge/munge.key ] || die "no /etc/munge/munge.key (munge package incomplete?)"
  mkdir -p /run/munge && chown munge:munge /run/munge
  start_daemon munged runuser -u munge -- /usr/sbin/munged -F
  sleep 0.5
  start_daemon slurmctld /usr/sbin/slurmctld -D -c -i
  start_daemon slurmd /usr/sbin/slurmd -D
  for _ in $(seq 1 120); do
    if [ "$(sinfo -h -N -o %T 2>/dev/null | head -n 1)" = "idle" ]; then echo "slurm-local: node idle"; return 0; fi
    sleep 0.25
  done
  tail -n 5 "$DIR"/*.log >&2 || true
  die "the node did not become idle"
}

stop() {
  if command -v scancel >/dev/null; then scancel --user=root >/dev/null 2>&1 || true; sleep 0.5; fi
  for name in slurmd slurmctld munged; do
    pid=$(cat "$DIR/$name.pid" 2>/dev/null || true)
    if alive "$pid"; then
      # runuser/setsid may stand between us and the daemon: stop the whole process group
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do alive "$pid" || break; sleep 0.1; done
    fi
    rm -f "$DIR/$name.pid"
  done
  rm -f /run/slurmctld.pid /run/slurmd.pid
  echo "slurm-local: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 start|stop" ;;
esac
