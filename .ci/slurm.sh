#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, with accounting, for the tests marked `slurm`.
#   .ci/slurm.sh install   Debian packages: slurmctld slurmd slurm-client munge slurmdbd mariadb-server (as root)
#   .ci/slurm.sh up DIR    start munged, MariaDB, slurmdbd, slurmctld, slurmd with every file under DIR;
#                          prints the line to source: export SLURM_CONF=DIR/slurm.conf
#   .ci/slurm.sh down DIR  stop them again, by the PIDs in DIR (never by process name)
# Accounting (slurmdbd + MariaDB) is needed: without it submitit never learns that a cancelled job died.
# Two fake GPUs (GRES files pointing at ordinary files) let `--gpus-per-node 1` be scheduled.
# No systemd is needed; everything runs as root. Tested with Debian 12's slurm-wlm 22.05.
set -euo pipefail

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local limit=$1 what=$2; shift 2
    for _ in $(seq $((limit * 5))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "slurm.sh: $what did not come up within ${limit}s" >&2
    return 1
}

install() {
    local sudo=""; if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge slurmdbd mariadb-server >/dev/null
}

up() {
    local dir; dir=$(mkdir -p "$1" && cd "$1" && pwd)
    if [ "$(id -u)" -ne 0 ]; then echo "slurm.sh up: run as root (the daemons run as root here)" >&2; exit 1; fi
    mkdir -p "$dir"/{log,spool/ctld,spool/d,db,gpu}
    # 1. munge: a fresh key, the daemon as the munge user
    mkdir -p /run/munge && chown munge:munge /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey -c -k /etc/munge/munge.key && chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    fi
    if ! (munge -n | unmunge) >/dev/null 2>&1; then  # a munged already running is used, and left running
        # munged may only write its pid file where the munge user may: copy it into DIR for `down`
        runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/actid-munged.pid 2>>"$dir/log/munged.log"
        wait_for 10 munge sh -c 'munge -n | unmunge'
        cp /run/munge/actid-munged.pid "$dir/munged.pid"
    fi
    # 2. accounting: MariaDB on loopback, then slurmdbd
    # root logs in through the socket as the OS's root only (no password that anyone on 127.0.0.1 could use); the
    # slurm user gets a random password, written only into the root-only slurmdbd.conf
    if [ ! -d "$dir/db/mysql" ]; then
        mariadb-install-db --user=root --datadir="$dir/db" --auth-root-authentication-method=socket \
            --skip-test-db >"$dir/log/mariadb-install.log" 2>&1
    fi
    local dbpass; dbpass=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    mariadbd --user=root --datadir="$dir/db" --bind-address=127.0.0.1 --port=3306 --socket="$dir/mysql.sock" \
        --pid-file="$dir/mariadb.pid" --log-error="$dir/log/mariadb.log" </dev/null >>"$dir/log/mariadb.log" 2>&1 &
    wait_for 30 MariaDB mariadb --socket="$dir/mysql.sock" -uroot -e "select 1"
    mariadb --socket="$dir/mysql.sock" -uroot -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost';
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1';
        ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$dbpass'; ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$dbpass';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
    cat >"$dir/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=$dbpass
LogFile=$dir/log/slurmdbd.log
PidFile=$dir/slurmdbd.pid
EOF
    chmod 600 "$dir/slurmdbd.conf"
    export SLURM_CONF="$dir/slurm.conf"
    # 3. slurm.conf: the node as slurmd sees it, renamed localhost; two fake GPUs
    local node; node=$(slurmd -C | head -1 | sed -E 's/^NodeName=[^ ]+/NodeName=localhost/')
    : >"$dir/gpu/0"; : >"$dir/gpu/1"
    printf 'NodeName=localhost Name=gpu File=%s\nNodeName=localhost Name=gpu File=%s\n' "$dir/gpu/0" "$dir/gpu/1" \
        >"$dir/gres.conf"
    cat >"$dir/slurm.conf" <<EOF
ClusterName=actid
SlurmctldHost=localhost
SlurmUser=root
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/d
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
JobRequeue=1
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
GresTypes=gpu
$node Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    slurmdbd  # reads slurmdbd.conf next to $SLURM_CONF
    wait_for 30 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster actid >/dev/null 2>&1 || true
    # 4. the controller, then the node daemon under the name localhost
    slurmctld
    wait_for 30 slurmctld scontrol ping
    slurmd -N localhost
    wait_for 30 "the node" sh -c '[ "$(sinfo -h -o %T)" = idle ]'
    echo "export SLURM_CONF=$dir/slurm.conf"
}

stop_pid() {  # stop_pid NAME PIDFILE: SIGTERM the process in PIDFILE and wait for it to exit
    local name=$1 file=$2 pid
    [ -s "$file" ] || return 0
    pid=$(cat "$file")
    # a stale pid file may name a process that is not ours any more: only signal the daemon it names
    if kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
        echo "slurm.sh: $name (pid $pid) ignored SIGTERM for 30 s; killing it" >&2
        kill -9 "$pid" 2>/dev/null || true
    fi
}

down() {
    local dir=$1
    if [ -s "$dir/slurmctld.pid" ]; then  # this cluster's jobs first, so no task outlives it
        SLURM_CONF="$dir/slurm.conf" squeue -h -o %A 2>/dev/null | xargs -r env SLURM_CONF="$dir/slurm.conf" scancel \
            2>/dev/null || true
        for _ in $(seq 150); do  # up to 30 s for the cancelled tasks to end
            [ -z "$(SLURM_CONF="$dir/slurm.conf" squeue -h -o %A 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    stop_pid slurmd "$dir/slurmd.pid"
    stop_pid slurmctld "$dir/slurmctld.pid"
    stop_pid slurmdbd "$dir/slurmdbd.pid"
    stop_pid mariadbd "$dir/mariadb.pid"
    stop_pid munged "$dir/munged.pid"
}

case "${1:-}" in
    install) install ;;
    up) up "${2:?usage: slurm.sh up DIR}" ;;
    down) down "${2:?usage: slurm.sh down DIR}" ;;
    *) echo "usage: slurm.sh install | up DIR | down DIR" >&2; exit 2 ;;
esac
