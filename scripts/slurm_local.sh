#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to run the workflow's SLURM profile for real (docs/SLURM.md):
#
#   sudo scripts/slurm_local.sh start    # apt-installs what is missing, writes the config, starts the daemons
#   scripts/slurm_local.sh status        # which daemons run, the node's state
#   sudo scripts/slurm_local.sh stop     # stops every daemon this script started (by PID), nothing else
#
# Daemons: munged, mariadbd + slurmdbd (accounting: snakemake-executor-plugin-slurm asks `sacct` for job states
# whenever sacct is installed, so sacct must answer), slurmctld and slurmd. One node = this host: its cores and
# memory, select/cons_tres with cores and memory as consumables (a job's mem_mb is booked and enforced), GRES
# (gpu) only where /dev/nvidia0 exists. Partition `local`, account `axformer` (root and $SUDO_USER in it).
# Everything the cluster writes stays under $AXF_SLURM_STATE (default /var/lib/axformer-slurm); the only files
# outside it are /etc/slurm/{slurm,slurmdbd,gres}.conf, which carry a marker line: a slurm.conf without it
# (a real site's) is never overwritten. Safe to call twice: start on a running cluster only checks it.
set -euo pipefail

STATE="${AXF_SLURM_STATE:-/var/lib/axformer-slurm}"
ETC=/etc/slurm
MARK="# written by axformer scripts/slurm_local.sh"
CLUSTER=axformer
PARTITION=local
ACCOUNT=axformer
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)   # start order; stop goes in reverse

die() { echo "slurm_local.sh: $*" >&2; exit 1; }
log() { echo "slurm_local.sh: $*"; }
pidfile() { echo "$STATE/run/$1.pid"; }

running() {   # running NAME: the PID we recorded is alive and is that program
    local f pid
    f="$(pidfile "$1")"
    [[ -s "$f" ]] || return 1
    pid="$(cat "$f")"
    [[ -d "/proc/$pid" ]] && grep -q "$1" "/proc/$pid/comm" 2>/dev/null
}

need_root() { [[ "$(id -u)" == 0 ]] || die "$1 needs root (sudo $0 $1): it installs packages and starts daemons."; }

wait_for() {   # wait_for SECONDS WHAT CMD...: poll CMD until it succeeds
    local secs="$1" what="$2"; shift 2
    for _ in $(seq 1 $((secs * 2))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "$what did not come up within ${secs}s; see $STATE/log/."
}

# ------------------------------------------------------------------------------------------- install
install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v slurmdbd >/dev/null || missing+=(slurmdbd)
    command -v mariadbd >/dev/null || missing+=(mariadb-server)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install SLURM 22.05+ and MariaDB by hand."
    log "installing ${missing[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    # the Debian packages start their services through invoke-rc.d; this script starts its own daemons instead
    apt-get install -y -q --no-install-recommends slurm-wlm "${missing[@]}" >"$STATE/log/apt.log" 2>&1 || {
        apt-get update -q >>"$STATE/log/apt.log" 2>&1
        apt-get install -y -q --no-install-recommends slurm-wlm "${missing[@]}" >>"$STATE/log/apt.log" 2>&1 ||
            die "apt-get install ${missing[*]} failed; see $STATE/log/apt.log."
    }
}

# ------------------------------------------------------------------------------------------- config
write_etc() {   # write_etc FILE MODE: stdin -> FILE, unless FILE exists without our marker
    local f="$ETC/$1"
    if [[ -e "$f" ]] && ! grep -qF "$MARK" "$f"; then
        die "$f exists and was not written by this script (a site configuration?); not touching it."
    fi
    { echo "$MARK"; cat; } >"$f.tmp"
    chmod "$2" "$f.tmp"
    mv "$f.tmp" "$f"
}

write_config() {
    local host cpus sockets cores threads mem node_line gres=""
    host="$(hostname -s)"
    # the hardware as slurmd sees it (its first line: NodeName=... CPUs=... RealMemory=...)
    node_line="$(slurmd -C | head -1)"
    cpus="$(nproc)"   # the cores this host lets us use (a container's cpuset may be smaller than the board)
    mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")"
    mem=$(( mem - mem / 10 ))   # keep 10 % for the OS and the daemons: a job's mem_mb must really be free
    sockets=1; cores="$cpus"; threads=1
    if [[ -e /dev/nvidia0 ]]; then
        local n
        n="$(ls /dev/nvidia[0-9]* 2>/dev/null | wc -l)"
        gres="Gres=gpu:$n"
        write_etc gres.conf 644 <<EOF
NodeName=$host Name=gpu File=/dev/nvidia[0-$((n - 1))]
EOF
    fi
    mkdir -p "$ETC"
    write_etc slurm.conf 644 <<EOF
# One-node test cluster ($host: $cpus cores, ${mem} MB for jobs). docs/SLURM.md.
ClusterName=$CLUSTER
# addresses given: the host name need not resolve (fresh CI containers)
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/run/slurmctld.daemon.pid
SlurmdPidFile=$STATE/run/slurmd.daemon.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# no cgroup plugins: they need a writable cgroup tree (absent in containers); memory is enforced by polling
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=2
JobAcctGatherParams=OverMemoryKill
# cores and memory are consumables: a job books its cpus and mem_mb and gets exactly those
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
# a job that names no memory (srun hostname) books 1 GB per CPU, not the whole node
DefMemPerCPU=1000
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=300
KillWait=5
InactiveLimit=0
${gres:+GresTypes=gpu}
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus Sockets=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$mem $gres State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    write_etc slurmdbd.conf 600 <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/run/slurmdbd.daemon.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
}

# ------------------------------------------------------------------------------------------- daemons
spawn() {   # spawn NAME CMD...: start CMD in the background (own session, output to the log), record its PID
    local name="$1"; shift
    setsid "$@" >>"$STATE/log/$name.out" 2>&1 < /dev/null &
    echo $! >"$(pidfile "$name")"
}

db_socket() { echo "$STATE/mysql/mysqld.sock"; }

start_db() {
    if ! running mariadbd; then
        if [[ ! -d "$STATE/mysql/mysql" ]]; then
            mkdir -p "$STATE/mysql"; chown mysql:mysql "$STATE/mysql"
            mariadb-install-db --user=mysql --datadir="$STATE/mysql" --auth-root-authentication-method=socket \
                --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1 ||
                die "mariadb-install-db failed; see $STATE/log/mariadb-install.log."
        fi
        # socket only (no TCP port to collide with); slurmdbd finds it through the client default below
        spawn mariadbd mariadbd --user=mysql --datadir="$STATE/mysql" --socket="$(db_socket)" --skip-networking \
            --pid-file="$STATE/mysql/mariadbd.pid" --log-error="$STATE/log/mariadbd.log" \
            --innodb-buffer-pool-size=32M
        wait_for 60 mariadbd mariadb --socket="$(db_socket)" -e "SELECT 1"
    fi
    # slurmdbd's MySQL client uses the default socket path for localhost
    mkdir -p /run/mysqld
    ln -sfn "$(db_socket)" /run/mysqld/mysqld.sock
    if ! running slurmdbd; then
        spawn slurmdbd slurmdbd -D
        wait_for 60 slurmdbd sacctmgr -n list cluster
    fi
    ensure_accounts
}

ensure_accounts() {   # the cluster, its account and the users who submit (root for CI, the sudo caller)
    sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    sacctmgr -n list account format=account | grep -qw "$ACCOUNT" ||
        sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="axformer local" >/dev/null
    local u
    for u in root ${SUDO_USER:-}; do
        sacctmgr -n list assoc user="$u" account="$ACCOUNT" format=user | grep -qw "$u" ||
            sacctmgr -i add user "$u" account="$ACCOUNT" cluster="$CLUSTER" defaultaccount="$ACCOUNT" >/dev/null
    done
}

node_idle() { sinfo -h -N -o %T | grep -qx idle; }

start() {
    need_root start
    mkdir -p "$STATE"/{run,log,ctld,d}
    chmod 755 "$STATE"
    install_packages
    if running slurmctld && running slurmd && scontrol ping >/dev/null 2>&1; then
        ensure_accounts; log "already running"; status; return 0
    fi
    write_config
    if ! running munged; then
        [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile /etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key
        mkdir -p /run/munge /var/log/munge /var/lib/munge
        chown munge:munge /run/munge /var/log/munge /var/lib/munge
        # setpriv execs munged as the munge user: the recorded PID is munged's own
        spawn munged setpriv --reuid=munge --regid=munge --init-groups munged --foreground
        wait_for 20 munged munge -n
    fi
    start_db
    running slurmctld || spawn slurmctld slurmctld -D -i
    wait_for 60 slurmctld scontrol ping
    running slurmd || spawn slurmd slurmd -D
    # a node that was drained by an earlier run comes back: this cluster has no other node to fall back on
    wait_for 60 "node registration" sinfo -h -N -o %T
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    wait_for 60 "node $(hostname -s) idle" node_idle
    log "cluster $CLUSTER up: partition $PARTITION, account $ACCOUNT"
    status
}

stop() {
    need_root stop
    local i name pid
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        name="${DAEMONS[$i]}"
        running "$name" || { rm -f "$(pidfile "$name")"; continue; }
        pid="$(cat "$(pidfile "$name")")"
        if [[ "$name" == slurmd ]] && running slurmctld; then
            # end the jobs first: their slurmstepd processes outlive slurmd otherwise
            squeue -h -o %i | xargs -r scancel --full >/dev/null 2>&1 || true
            for _ in $(seq 1 60); do [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && break; sleep 0.5; done
        fi
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do [[ -d "/proc/$pid" ]] || break; sleep 0.25; done
        [[ -d "/proc/$pid" ]] && kill -KILL "$pid" 2>/dev/null
        rm -f "$(pidfile "$name")"
        log "stopped $name ($pid)"
    done
    [[ -L /run/mysqld/mysqld.sock ]] && rm -f /run/mysqld/mysqld.sock
    return 0
}

status() {
    local name rc=0
    for name in "${DAEMONS[@]}"; do
        if running "$name"; then echo "$name: running (pid $(cat "$(pidfile "$name")"))"; else echo "$name: stopped"; rc=3; fi
    done
    if command -v sinfo >/dev/null && running slurmctld; then
        sinfo -N -o "%N %T %c %m %G" || true
    fi
    return $rc
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
