#!/usr/bin/env bash
# End-to-end test of the SLURM array script, under a real scheduler on this machine.
#
# Installs slurm-wlm and munge with apt when missing (as root), starts munged, slurmctld and
# slurmd as a one-node cluster of this machine's CPUs and memory (private config, ports and
# state under a temporary folder; nothing in /etc is changed), and stops them by their pids
# at the end. On a 4-subject phantom dataset with one broken image it then:
#   1. writes the array and group scripts with `spineseg ... participant --slurm-script`,
#      submits the array and the group level (--dependency=afterany) and waits (bounded);
#   2. checks: tasks completed (the broken one failed), every good image stamped ok with
#      its outputs, the broken one failed with its one-line reason (stamp and group_qc.tsv),
#      shared files intact, bids-validator-deno 0 errors, the input tree unchanged;
#   3. resubmits the array: finished tasks end within seconds and rewrite nothing;
#   4. kills a task with scancel while it segments, checks that nothing half written is
#      visible, resubmits that task alone and checks that it completes;
#   5. a GPU request (the node has a gres `gpu:2` backed by empty files, no GPU needed): the
#      script SpineSeg writes for --slurm-gpus 1 is accepted, its tasks get a GPU and run;
#   6. more tasks than --slurm-max-array: the split arrays are accepted, while one array over
#      the cluster's MaxArraySize (4 here) is refused by sbatch.
# Prints how long each part took.
#
# Usage: tests/slurm/run_slurm_test.sh [--keep]    (--keep: keep the temporary folder)
# Environment: SPINESEG_VENV (default ./.venv) holds spineseg and bids-validator-deno;
# SPINESEG_SLURM_TIMEOUT (default 900) bounds each wait for the queue, in seconds.
# Exit status: 0 passed or skipped (prints SKIP and why), 1 failed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV_BIN="${SPINESEG_VENV:-$REPO/.venv}/bin"
PY="$VENV_BIN/python"
TIMEOUT="${SPINESEG_SLURM_TIMEOUT:-900}"
KEEP=0
case "${1:-}" in
    --keep) KEEP=1 ;;
    -h | --help) sed -n '2,20p' "${BASH_SOURCE[0]}"; exit 0 ;;
    "") ;;
    *) echo "unknown argument: $1" >&2; exit 64 ;;
esac

skip() { echo "SKIP: $*"; exit 0; }
fail() { echo "FAIL: $*" >&2; exit 1; }
step() { printf '\n== %s\n' "$*"; }
ok() { echo "ok: $*"; }

T_START=$(date +%s.%N)
T_LAST=$T_START
TIMES=()
lap() {  # lap NAME: the time since the previous lap, for the table printed at exit
    local now
    now=$(date +%s.%N)
    TIMES+=("$(awk -v n="$1" -v a="$T_LAST" -v b="$now" 'BEGIN{printf "%-46s %7.1f s", n, b - a}')")
    T_LAST=$now
}

[ -x "$VENV_BIN/spineseg" ] || fail "$VENV_BIN/spineseg not found (run make venv, or set SPINESEG_VENV)"

# ---------------------------------------------------------------------------------------------
# SLURM and munge from Debian, when missing.
if ! command -v sbatch >/dev/null || ! command -v slurmctld >/dev/null ||
    ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        skip "SLURM is not installed (slurm-wlm, munge) and this user cannot apt-get install it"
    fi
    step "installing slurm-wlm and munge (apt-get)"
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive nice -n 19 \
        apt-get install -y -q slurm-wlm munge; } >/dev/null 2>&1; then
        skip "apt-get could not install slurm-wlm and munge"
    fi
fi
[ "$(id -u)" -eq 0 ] || skip "starting slurmd needs root here (it runs jobs as their user)"
lap "install check"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/spineseg-slurm-test.XXXXXX")"
chmod 755 "$WORK"
PIDS=()  # munged, slurmctld, slurmd: stopped in reverse order, by pid
cleanup() {
    local rc=$? i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill "${PIDS[i]}" 2>/dev/null || true
        wait "${PIDS[i]}" 2>/dev/null || true
    done
    if [ "${#TIMES[@]}" -gt 0 ]; then
        echo
        echo "== Timings"
        printf '%s\n' "${TIMES[@]}"
        awk -v a="$T_START" -v b="$(date +%s.%N)" 'BEGIN{printf "%-46s %7.1f s\n", "total", b - a}'
    fi
    if [ "$rc" -ne 0 ] || [ "$KEEP" -eq 1 ]; then
        echo "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
# A one-node cluster: private munge key and socket, free ports, state under $WORK.
step "starting munged, slurmctld and slurmd"
mkdir -p "$WORK/munge" "$WORK/slurm/state" "$WORK/slurm/spool" "$WORK/slurm/log"
chmod 700 "$WORK/munge"
head -c 1024 /dev/urandom >"$WORK/munge/munge.key"
chmod 400 "$WORK/munge/munge.key"
MUNGE_SOCKET="$WORK/munge/munge.socket"
munged -F --force --key-file="$WORK/munge/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$WORK/munge/munged.pid" --log-file="$WORK/munge/munged.log" \
    --seed-file="$WORK/munge/munged.seed" >"$WORK/munge/munged.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do [ -S "$MUNGE_SOCKET" ] && break; sleep 0.1; done
[ -S "$MUNGE_SOCKET" ] || skip "munged did not start: $(tail -n 1 "$WORK/munge/munged.log" 2>/dev/null)"

read -r CTLD_PORT SLURMD_PORT < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
NODE_LINE="$(slurmd -C | head -n 1)"  # NodeName=<host> CPUs=... RealMemory=... as detected
NODE="$(hostname -s)"
CPUS="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")"
export SLURM_CONF="$WORK/slurm/slurm.conf"
cat >"$SLURM_CONF" <<EOF
ClusterName=spineseg-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$WORK/slurm/state
SlurmdSpoolDir=$WORK/slurm/spool
SlurmctldPidFile=$WORK/slurm/slurmctld.pid
SlurmdPidFile=$WORK/slurm/slurmd.pid
SlurmctldLogFile=$WORK/slurm/log/slurmctld.log
SlurmdLogFile=$WORK/slurm/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
MpiDefault=none
GresTypes=gpu
MaxArraySize=4
ReturnToService=2
MinJobAge=3600
KillWait=10
$NODE_LINE Gres=gpu:2 NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=test Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
# Two GPUs without hardware: Slurm books them like real ones. A count-only GPU is dropped by
# slurmd ("Removing file-less GPU"), so each stands for an empty file (no device cgroups here).
mkdir -p "$WORK/fake-gpu" && touch "$WORK/fake-gpu/gpu0" "$WORK/fake-gpu/gpu1"
echo "NodeName=$NODE Name=gpu File=$WORK/fake-gpu/gpu[0-1]" >"$WORK/slurm/gres.conf"
slurmctld -D -f "$SLURM_CONF" >"$WORK/slurm/log/slurmctld.out" 2>&1 &
PIDS+=($!)
slurmd -D -f "$SLURM_CONF" >"$WORK/slurm/log/slurmd.out" 2>&1 &
PIDS+=($!)
state=""
for _ in $(seq 60); do
    state="$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)"
    [ "$state" = idle ] && break
    sleep 1
done
if [ "$state" != idle ]; then
    tail -n 5 "$WORK/slurm/log/slurmctld.log" "$WORK/slurm/log/slurmd.log" 2>/dev/null || true
    skip "the one-node cluster did not come up (node state: '${state:-none}')"
fi
ok "node $NODE idle ($NODE_LINE)"
lap "start munged, slurmctld, slurmd"

# ---------------------------------------------------------------------------------------------
# Data: 4 phantom subjects, sub-04's only image cut in half (its header still reads).
step "phantom dataset"
cd "$WORK"
"$VENV_BIN/spineseg" phantoms bids --subjects 4 >/dev/null
BROKEN=sub-04_acq-sag_T2w
broken_file="bids/sub-04/anat/$BROKEN.nii.gz"
[ -f "$broken_file" ] || fail "the phantoms changed: $broken_file not written"
truncate -s "$(($(stat -c %s "$broken_file") / 2))" "$broken_file"
digest() { (cd "$1" && find . -printf '%p %m %s\n' | sort && find . -type f -print0 | sort -z |
    xargs -0 sha256sum) | sha256sum; }
INPUT_DIGEST="$(digest bids)"
lap "phantoms (4 subjects)"

# ---------------------------------------------------------------------------------------------
step "writing the scripts with spineseg"
"$VENV_BIN/spineseg" bids out participant --slurm-script jobs/spineseg.sh \
    --slurm-throttle "$CPUS" --slurm-mem 2G --slurm-time 00:20:00 \
    --nprocs 1 --omp-nthreads 1 --weights demo --device cpu \
    | tee "$WORK/generate.out"
for f in jobs/spineseg.sh jobs/spineseg_group.sh jobs/spineseg_selection.json; do
    [ -s "$f" ] || fail "$f not written"
done
grep -q -- '--array=0-3%' jobs/spineseg.sh || fail "the array does not have 4 throttled tasks"
echo "--- jobs/spineseg.sh"
cat jobs/spineseg.sh
lap "write the scripts"

# wait_gone JOBID...: until none of the jobs is in the queue, at most $TIMEOUT s
wait_gone() {
    local deadline=$((SECONDS + TIMEOUT))
    while [ -n "$(squeue -h -j "$(IFS=,; echo "$*")" -o %i 2>/dev/null)" ]; do
        [ "$SECONDS" -lt "$deadline" ] || { squeue; fail "jobs $* still queued after $TIMEOUT s"; }
        sleep 2
    done
}
# task_states JOBID: "<task id> <state> <exit code> <run seconds>" per array task
task_states() {
    scontrol -o show job "$1" | "$PY" -c '
import sys
for line in sys.stdin:
    f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    h, m, s = (f["RunTime"].split("-")[-1]).split(":")
    print(f.get("ArrayTaskId", "-"), f["JobState"], f["ExitCode"], int(h) * 3600 + int(m) * 60 + int(s))
' | sort -n
}
stamp_field() { "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2]))' "$@"; }

# ---------------------------------------------------------------------------------------------
step "submitting the array and the group level (afterany)"
ARRAY=$(sbatch --parsable jobs/spineseg.sh)
GROUP=$(sbatch --parsable --dependency=afterany:"$ARRAY" jobs/spineseg_group.sh)
echo "array job $ARRAY, group job $GROUP"
wait_gone "$ARRAY" "$GROUP"
task_states "$ARRAY" | tee "$WORK/states1"
lap "array (4 tasks, $CPUS at once) + group"

step "checking the first run"
expected_states="0 COMPLETED 0:0
1 COMPLETED 0:0
2 COMPLETED 0:0
3 FAILED 1:0"
[ "$(cut -d' ' -f1-3 "$WORK/states1")" = "$expected_states" ] ||
    fail "task states: expected 0-2 COMPLETED and 3 FAILED (exit 1)"
[ "$(scontrol -o show job "$GROUP" | grep -o 'JobState=[A-Z]*')" = JobState=COMPLETED ] ||
    fail "group job did not complete: $(cat out/logs/slurm/spineseg-group_"$GROUP".out)"
ok "tasks 0-2 completed, task 3 (sub-04) failed with exit 1, the group level completed after it"
[ "$(ls out/logs/slurm/spineseg_"$ARRAY"_*.out | wc -l)" -eq 4 ] || fail "not 4 task logs"
ok "one log per task in out/logs/slurm/"
good=0
while read -r src; do
    name="$(basename "$src" .nii.gz)"
    stamp="out/logs/status/$name.json"
    [ -f "$stamp" ] || fail "$name: no status stamp"
    status="$(stamp_field "$stamp" status)"
    if [ "$name" = "$BROKEN" ]; then
        [ "$status" = failed ] || fail "$name: status $status, expected failed"
        reason="$(stamp_field "$stamp" reason)"
        [ -n "$reason" ] && [ "$(printf '%s\n' "$reason" | wc -l)" -eq 1 ] ||
            fail "$name: no one-line reason"
        ok "$name failed: $reason"
        continue
    fi
    [ "$status" = ok ] || fail "$name: status $status, expected ok"
    "$PY" - "$stamp" <<'EOF' || fail "$name: an output listed in its stamp is missing or unreadable"
import json, sys
from pathlib import Path
import nibabel as nib
stamp = json.load(open(sys.argv[1]))
for rel in stamp["outputs"]:
    path = Path("out") / rel
    assert path.is_file(), rel
    if rel.endswith(".nii.gz"):
        nib.load(path).get_fdata()
EOF
    good=$((good + 1))
done < <(cd bids && find . -path ./derivatives -prune -o -name '*.nii.gz' -print | sort)
[ "$good" -eq 7 ] || fail "$good good images done, expected 7"
ok "7 good images ok, every output in their stamps complete"
"$PY" - "$BROKEN" <<'EOF' || fail "group_qc.tsv does not list $BROKEN as failed with its reason"
import csv, sys
rows = list(csv.DictReader(open("out/group_qc.tsv"), delimiter="\t"))
row = [r for r in rows if r["image"] == sys.argv[1]]
assert row and row[0]["status"] == "failed" and row[0]["reason"] not in ("", "n/a"), row
print(f"ok: group_qc.tsv: {sys.argv[1]} failed, reason: {row[0]['reason']}")
EOF
"$PY" - <<'EOF' || fail "a shared file is damaged"
import csv, json
from pathlib import Path
out = Path("out")
description = json.loads((out / "dataset_description.json").read_text())
assert description["DatasetType"] == "derivative", description
for lut in out.glob("seg-*_dseg.tsv"):
    rows = list(csv.DictReader(lut.open(), delimiter="\t"))
    assert rows and {"index", "name"} <= set(rows[0]), lut
assert (out / ".bidsignore").read_text().strip()
temp = [p for p in out.rglob(".*.tmp*")]
assert not temp, temp
print("ok: shared files intact (dataset_description.json, LUTs, .bidsignore), no temp file left")
EOF
"$PY" - <<'EOF' || fail "bids-validator-deno found errors in the output"
from bids_app.bids.validation import validate
report = validate("out")
assert report.ok, report.error_lines()
print(f"ok: bids-validator-deno: 0 errors ({len(report.warnings)} warning(s))")
EOF
[ "$(digest bids)" = "$INPUT_DIGEST" ] || fail "the input tree changed"
ok "input tree unchanged"
lap "checks"

# ---------------------------------------------------------------------------------------------
step "resubmitting the whole array: finished tasks must end within seconds"
ok_stamps() { find out/logs/status -name '*.json' ! -name "$BROKEN.json" -print0 | sort -z |
    xargs -0 sha256sum; }
before="$(ok_stamps)"
ARRAY2=$(sbatch --parsable jobs/spineseg.sh)
wait_gone "$ARRAY2"
task_states "$ARRAY2" | tee "$WORK/states2"
[ "$(cut -d' ' -f1-3 "$WORK/states2")" = "$expected_states" ] || fail "resubmitted task states"
awk '$1 != 3 && $4 > 30 {bad = 1} END {exit bad}' "$WORK/states2" ||
    fail "a finished task took more than 30 s on resubmission"
[ "$(ok_stamps)" = "$before" ] || fail "the resubmission rewrote a finished image's stamp"
grep -q "skipped, already done" out/logs/slurm/spineseg_"$ARRAY2"_0.out ||
    fail "task 0 did not report its images as skipped"
ok "finished tasks ended in $(awk '$1 != 3 {print $4 " s"}' "$WORK/states2" | paste -sd, -), nothing recomputed"
lap "resubmitted array (nothing to do)"

# ---------------------------------------------------------------------------------------------
step "killing a task with scancel while it segments, then resubmitting it"
# sub-02 (task 1) as never finished: its outputs and stamps removed.
rm -rf out/sub-02 out/sub-02.html out/logs/status/sub-02_*.json
KILLED=$(sbatch --parsable --array=1 jobs/spineseg.sh)
log="out/logs/slurm/spineseg_${KILLED}_1.out"
deadline=$((SECONDS + TIMEOUT))
until grep -q "no previous result; segmenting" "$log" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || fail "task $KILLED never started segmenting"
    sleep 0.5
done
sleep 4  # halfway through the image
scancel "$KILLED"
wait_gone "$KILLED"
task_states "$KILLED"
scontrol -o show job "$KILLED" | grep -q 'JobState=CANCELLED' || fail "task was not cancelled"
[ ! -e out/logs/status/sub-02_acq-sag_T1w.json ] || fail "the task finished its image before scancel"
"$PY" - <<'EOF' || fail "the killed task left a half-written or falsely stamped output"
import json
from pathlib import Path
import nibabel as nib
out = Path("out")
for stamp in out.glob("logs/status/sub-02_*.json"):
    data = json.loads(stamp.read_text())
    for rel in data["outputs"]:
        assert (out / rel).is_file(), f"{stamp.name} lists missing {rel}"
for image in out.glob("sub-02/**/[!.]*.nii.gz"):
    nib.load(image).get_fdata()  # a visible NIfTI is always complete
hidden = sorted(p.name for p in out.rglob(".*.tmp*"))
print(f"ok: nothing half written is visible ({len(hidden)} hidden temp file(s) left: {hidden})")
EOF
lap "task killed halfway"
RESUB=$(sbatch --parsable --array=1 jobs/spineseg.sh)
wait_gone "$RESUB"
task_states "$RESUB"
scontrol -o show job "$RESUB" | grep -q 'JobState=COMPLETED' || fail "the resubmitted task failed"
for name in sub-02_acq-sag_T1w sub-02_acq-sag_T2w; do
    [ "$(stamp_field "out/logs/status/$name.json" status)" = ok ] || fail "$name not ok"
done
"$PY" - <<'EOF' || fail "the output is not valid after the resubmission"
from bids_app.bids.validation import validate
report = validate("out")
assert report.ok, report.error_lines()
print("ok: sub-02 completed by the resubmission; bids-validator-deno: 0 errors")
EOF
[ "$(digest bids)" = "$INPUT_DIGEST" ] || fail "the input tree changed"
lap "resubmitted killed task"

# ---------------------------------------------------------------------------------------------
step "a GPU request: the script for --slurm-gpus 1 is accepted and its tasks get a GPU"
"$VENV_BIN/spineseg" bids out participant --slurm-script jobs/gpu.sh --slurm-gpus 1 \
    --slurm-mem 2G --slurm-time 00:20:00 --nprocs 1 --omp-nthreads 1 --weights demo \
    --device cpu >/dev/null 2>"$WORK/gpu.err"
grep -q -- '^#SBATCH --gres=gpu:1$' jobs/gpu.sh || fail "no --gres=gpu:1 line in jobs/gpu.sh"
if grep -q -- '--gpus-per-task\|--tres-per-task' jobs/gpu.sh && ! grep -q -- '--ntasks' jobs/gpu.sh; then
    fail "--gpus-per-task without --ntasks (refused by Slurm 23.11 and later)"
fi
grep -q "books 1 GPU(s) it leaves idle" "$WORK/gpu.err" || fail "no warning for --device cpu with a GPU"
GPU=$(sbatch --parsable jobs/gpu.sh) || fail "sbatch refused the GPU request"
wait_gone "$GPU"
task_states "$GPU" | tee "$WORK/states-gpu"
[ "$(cut -d' ' -f1-3 "$WORK/states-gpu")" = "$expected_states" ] || fail "GPU task states"
[ "$(scontrol -o show job "$GPU" | grep -c 'TresPerNode=gres:gpu:1')" -eq 4 ] ||
    fail "the tasks did not ask for one GPU each"
sed 's/^#SBATCH --gres=gpu:1$/#SBATCH --gres=gpu:3/' jobs/gpu.sh >"$WORK/gpu3.sh"
if sbatch --test-only "$WORK/gpu3.sh" >/dev/null 2>&1; then
    fail "the node has 2 GPUs, yet a request for 3 was accepted: the GPUs are not counted"
fi
ok "sbatch accepted --gres=gpu:1 (and refused 3 of the node's 2 GPUs); 4 GPU tasks ran"
lap "GPU request (count-only gres)"

# ---------------------------------------------------------------------------------------------
step "more tasks than MaxArraySize: split arrays are accepted"
if sbatch --test-only --array=0-4 jobs/spineseg.sh >/dev/null 2>&1; then
    fail "sbatch accepted --array=0-4 although MaxArraySize=4"
fi
"$VENV_BIN/spineseg" bids out participant --slurm-script jobs/split.sh --slurm-max-array 3 \
    --slurm-mem 2G --nprocs 1 --omp-nthreads 1 --weights demo --device cpu >"$WORK/split.out"
grep -qx -- '#SBATCH --array=0-2' jobs/split.sh || fail "jobs/split.sh is not the array 0-2"
grep -qx -- '#SBATCH --array=0-0' jobs/split_part2.sh || fail "jobs/split_part2.sh is not 0-0"
S1=$(sbatch --parsable jobs/split.sh) || fail "sbatch refused jobs/split.sh"
S2=$(sbatch --parsable jobs/split_part2.sh) || fail "sbatch refused jobs/split_part2.sh"
SG=$(sbatch --parsable --dependency=afterany:"$S1":"$S2" jobs/split_group.sh)
wait_gone "$S1" "$S2" "$SG"
{ task_states "$S1"; task_states "$S2" | sed 's/^0 /3 /'; } | tee "$WORK/states-split"
[ "$(cut -d' ' -f1-3 "$WORK/states-split")" = "$expected_states" ] || fail "split task states"
grep -qF 'array2=$(sbatch --parsable' "$WORK/split.out" || fail "the submit lines miss array 2"
[ "$(scontrol -o show job "$SG" | grep -o 'JobState=[A-Z]*')" = JobState=COMPLETED ] ||
    fail "the group job after the split arrays did not complete"
ok "4 tasks as arrays 0-2 and 0-0 (MaxArraySize 4, --slurm-max-array 3), group level after both"
lap "split arrays"
echo
echo "PASS: SLURM array, group level, resubmission, scancel recovery, GPU request, split arrays"
