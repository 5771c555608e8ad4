# Shared by .ci/slurm_up.sh (one host) and .ci/slurm_netns.sh (network-namespace hosts): sourced.

# A random first job id. A wiped state would restart job ids at 1; the MPICH wheel names its
# shared-memory segment after PMI_JOBID (<job>.<step>) and leaves it in /dev/shm when a job is killed
# or aborts, so a later job with the same id hangs forever in MPI_Init on the stale segment (seen
# here). Below Slurm's default MaxJobId of 67043328.
random_first_job_id() { echo $(( (RANDOM * 32768 + RANDOM) % 60000000 + 1000 )); }

# slurm_conf_common BASE NODE_TAG FIRST_JOB_ID [EXTRA_LINE]: the slurm.conf lines both set-ups share
# (auth, paths under BASE, plugins, accounting off, job completion file, timeouts). NODE_TAG is ""
# for one slurmd, "%n" when several slurmd share BASE (their spool, pid and log are then per node).
slurm_conf_common() {
    local base="$1" tag="$2" first="$3" extra="${4:-}"
    cat <<CONF
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$base/state
SlurmdSpoolDir=$base/spool${tag:+/$tag}
SlurmctldPidFile=$base/slurmctld.pid
SlurmdPidFile=$base/slurmd${tag:+.$tag}.pid
SlurmctldLogFile=$base/log/slurmctld.log
SlurmdLogFile=$base/log/slurmd${tag:+.$tag}.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$base/log/jobcomp.txt
JobRequeue=1
FirstJobId=$first
${extra}
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=5
Waittime=0
MinJobAge=300
CONF
}
