#!/usr/bin/env python3
"""A one-machine SLURM for tests: `sbatch`, `srun`, `sacct`, `squeue`, `scontrol` and `scancel` as their users see them.

tests/fake_slurm/bin/ holds one executable per command; put that directory first on PATH and point FAKE_SLURM_SPOOL at an
empty directory (the "cluster's" state). Standard library only: it runs under any python3.

What is emulated, as SLURM does it:
- `sbatch [options] script [args]`: the script's `#SBATCH` lines, overridden by command-line options; prints
  "Submitted batch job N" (or N with --parsable) and returns at once, like the real one. Job arrays (`--array=0-3%2`) get
  SLURM_ARRAY_JOB_ID / SLURM_ARRAY_TASK_ID and a job id of their own per task; sacct shows them as N_0, N_1, ...
  The cluster has room for one job at a time: jobs run in submission order, array tasks one after another.
- The batch script runs under bash in the submit directory, with the submitter's environment (--export=ALL) plus
  SLURM_JOB_ID, SLURM_JOB_NAME, SLURM_JOB_NODELIST, SLURM_JOB_NUM_NODES, SLURM_NTASKS, SLURM_NTASKS_PER_NODE,
  SLURM_TASKS_PER_NODE, SLURM_PROCID / SLURM_LOCALID / SLURM_NODEID (0 for the batch step), SLURM_RESTART_COUNT,
  SLURM_SUBMIT_DIR, SLURM_CLUSTER_NAME; stdout/stderr go to --output / --error (%j %A %a %x %N %u patterns; --open-mode).
- Nodes are named by loopback addresses (127.0.0.1, 127.0.0.2, ...; SLURM_JOB_NODELIST=127.0.0.[1-2]), so the job's first
  node, which every launcher takes as the rendezvous host, is this machine.
- `srun [options] command`: the step's tasks (all of the job's, or -n / -N / --ntasks-per-node) as local processes with
  SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID, SLURMD_NODENAME, SLURM_STEP_ID, ...; per-task --output / --error (%t);
  signals it receives (INT, TERM, HUP, QUIT, USR1, USR2, CONT) are forwarded to the tasks; --kill-on-bad-exit; its exit
  status is the highest of its tasks'.
- `scontrol requeue ID`: the job is ended (SIGTERM to all its processes, SIGKILL after KillWait) and runs again with the same
  job id and SLURM_RESTART_COUNT + 1; `scontrol show hostnames [LIST]`; `scontrol show job ID`.
- `scancel ID` (CANCELLED); `scancel --signal=SIG [--batch|--full] ID`: to the steps' tasks by default, to the batch shell
  with --batch, to both with --full.
- `sacct -j ID -o JobID,State,NodeList,ExitCode,... [--parsable2]`, `squeue [-j ID] [-h] [-o %i %T ...]`.

One command is the test's own, standing in for the clock: `slurm.py timelimit ID` acts as if the job's time limit were
`--signal`'s delay away: it sends the job's `--signal` (to the batch shell with `B:`, else to the steps' tasks), and a job
still running FAKE_SLURM_GRACE_S seconds later (default 300) is killed with state TIMEOUT, as SLURM does at the limit.
Every submission, start, signal, requeue and end is a line in $FAKE_SLURM_SPOOL/events.log.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

SPOOL = Path(os.environ.get("FAKE_SLURM_SPOOL", "/nonexistent-fake-slurm-spool"))
NODE_PREFIX = "127.0.0."
KILL_WAIT_S = float(os.environ.get("FAKE_SLURM_KILL_WAIT_S", "10"))
GRACE_S = float(os.environ.get("FAKE_SLURM_GRACE_S", "300"))
POLL_S = 0.2
# options that take a value (as --opt=value, --opt value, or the short form)
VALUED = {"nodes", "ntasks", "ntasks-per-node", "output", "error", "job-name", "time", "array", "signal", "chdir", "partition",
          "account", "cpus-per-task", "gpus-per-node", "gpus", "mem", "open-mode", "qos", "constraint", "comment", "wckey",
          "dependency", "gres", "exclude", "nodelist", "mail-type", "mail-user", "format", "jobs", "mem-per-cpu", "mem-per-gpu",
          "cpus-per-gpu", "gpus-per-task", "distribution"}
SHORT = {"-N": "nodes", "-n": "ntasks", "-o": "output", "-e": "error", "-J": "job-name", "-t": "time", "-a": "array",
         "-D": "chdir", "-p": "partition", "-A": "account", "-c": "cpus-per-task", "-G": "gpus", "-s": "signal", "-j": "jobs",
         "-b": "batch", "-f": "full", "-h": "noheader", "-P": "parsable2", "-X": "allocations", "-u": "user"}
FLAGS = {"batch", "full", "noheader", "parsable2", "allocations", "parsable", "requeue", "no-requeue", "unbuffered", "me",
         "exclusive", "label"}
FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGCONT")


def fail(message: str, status: int = 1):
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    raise SystemExit(status)


# ---------------------------------------------------------------------------------------------------------------- the spool
@contextmanager
def locked(name: str):
    SPOOL.mkdir(parents=True, exist_ok=True)
    with open(SPOOL / f"{name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def event(key: str, text: str) -> None:
    with locked("events"):
        with open(SPOOL / "events.log", "a") as f:
            f.write(f"{time.time():.3f} {key} {text}\n")


def job_dir(key: str) -> Path:
    return SPOOL / "jobs" / key


def load(key: str) -> dict:
    return json.loads((job_dir(key) / "job.json").read_text())


def save(rec: dict) -> None:
    d = job_dir(rec["key"])
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "job.json.tmp"
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, d / "job.json")


def all_jobs() -> list[dict]:
    root = SPOOL / "jobs"
    recs = [json.loads((d / "job.json").read_text()) for d in root.iterdir() if (d / "job.json").exists()] if root.is_dir() else []
    return sorted(recs, key=lambda r: (int(r["array_job_id"] or r["job_id"]), int(r["array_task_id"] or 0)))


def select(ids: list[str]) -> list[dict]:
    """Jobs named by ids as users write them: 12 (a job, or every task of array 12), 12_3 (one array task)."""
    found = []
    for rec in all_jobs():
        for jid in ids:
            if jid in (rec["key"], str(rec["job_id"])) or ("_" not in jid and jid == str(rec["array_job_id"])):
                found.append(rec)
                break
    return found


def request(key: str, what: str, payload: str = "") -> None:
    (job_dir(key) / what).write_text(payload)


def nodelist(n: int) -> str:
    return f"{NODE_PREFIX}1" if n == 1 else f"{NODE_PREFIX}[1-{n}]"


def expand_nodelist(text: str) -> list[str]:
    out = []
    for prefix, ranges, single in re.findall(r"([^,\[]*)\[([^\]]*)\]|([^,\[\]]+)", text):
        if single:
            out.append(single)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            out += [f"{prefix}{i:0{len(lo)}d}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def expand_pattern(pattern: str, env: dict, task: int | None = None) -> str:
    """SLURM's filename patterns: %j job id, %A array master id, %a array index, %x job name, %N node, %u user, %t task."""
    values = {"j": env.get("SLURM_JOB_ID", ""), "A": env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID", ""),
              "a": env.get("SLURM_ARRAY_TASK_ID", "4294967294"), "x": env.get("SLURM_JOB_NAME", ""),
              "N": env.get("SLURMD_NODENAME", f"{NODE_PREFIX}1"), "u": os.environ.get("USER", "user"),
              "t": "" if task is None else str(task), "s": env.get("SLURM_STEP_ID", "batch"), "%": "%"}
    return re.sub(r"%([jAaxNuts%])", lambda m: values[m.group(1)], pattern)


# ---------------------------------------------------------------------------------------------------------------- options
def parse_options(tokens: list[str], short: dict | None = None) -> tuple[dict, list[str]]:
    """Leading options -> {name: value or True} (repeated ones -> the last; "jobs" accumulates); the rest (script/command).
    `short`: the command's own short options where they differ (sacct's and squeue's -o is --format)."""
    short = {**SHORT, **(short or {})}
    opts: dict = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "--":
            i += 1
            break
        if tok.startswith("--"):
            key, eq, value = tok[2:].partition("=")
            if not eq and key in VALUED:
                i += 1
                value = tokens[i]
            elif not eq:
                value = True
        elif tok[:2] in short and tok.startswith("-"):
            key = short[tok[:2]]
            if key in FLAGS:
                value = True
            elif len(tok) > 2:
                value = tok[2:]
            else:
                i += 1
                value = tokens[i]
        else:
            break
        if key == "jobs":
            opts.setdefault("jobs", []).extend(str(value).split(","))
        else:
            opts[key] = value
        i += 1
    return opts, tokens[i:]


def directives(script: Path) -> dict:
    """The #SBATCH lines at the top of a batch script (SLURM stops reading them at the first command)."""
    import shlex

    tokens = []
    for line in script.read_text().splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#SBATCH"):
            tokens += shlex.split(stripped[len("#SBATCH"):], comments=True)
        elif stripped and not stripped.startswith("#"):
            break
    return parse_options(tokens)[0]


def parse_signal(spec) -> dict | None:
    """--signal=[{R|B}:]<sig>[@<seconds>] -> {"sig": "USR1", "batch": bool, "delay": s}."""
    if not spec:
        return None
    target, _, rest = str(spec).rpartition(":")
    sig, _, delay = rest.partition("@")
    return {"sig": sig.upper().removeprefix("SIG"), "batch": "B" in target.upper(), "delay": int(delay or 60)}


def signum(name: str) -> int:
    name = str(name).upper()
    return int(name) if name.isdigit() else getattr(signal, name if name.startswith("SIG") else f"SIG{name}")


# ---------------------------------------------------------------------------------------------------------------- sbatch
def sbatch(argv: list[str]) -> None:
    opts, rest = parse_options(argv)
    if not rest:
        fail("no batch script given")
    script = Path(rest[0]).resolve()
    if not script.is_file():
        fail(f"unable to open file {rest[0]}")
    options = {**directives(script), **opts}
    submit_dir = str(Path(options.get("chdir", os.getcwd())).resolve())
    indices = [None]
    if options.get("array"):  # 0-3, 1,5,7, 0-9%2 (the throttle is moot: one job at a time here)
        indices = []
        for part in str(options["array"]).split("%")[0].split(","):
            lo, _, hi = part.partition("-")
            indices += range(int(lo), int(hi or lo) + 1)
    with locked("ids"):
        counter = SPOOL / "next_id"
        first = int(counter.read_text()) if counter.exists() else 1000 + os.getpid() % 8000  # distinct MASTER_PORTs per test
        counter.write_text(str(first + len(indices)))
    nodes = int(options.get("nodes", 1))
    per_node = int(options["ntasks-per-node"]) if "ntasks-per-node" in options else None
    ntasks = int(options["ntasks"]) if "ntasks" in options else nodes * (per_node or 1)
    keys = []
    for k, index in enumerate(indices):
        key = str(first) if index is None else f"{first}_{index}"
        save({"key": key, "job_id": first + k, "array_job_id": None if index is None else first,
              "array_task_id": index, "array_count": len(indices), "name": str(options.get("job-name", script.name)),
              "script": str(script), "args": rest[1:], "submit_dir": submit_dir, "options": options, "nodes": nodes,
              "ntasks": ntasks, "state": "PENDING", "restarts": 0, "exit_code": None, "batch_pid": None, "submitted": time.time()})
        keys.append(key)
        event(key, f"submitted nodes={nodes} ntasks={ntasks} signal={options.get('signal')}")
    log = open(SPOOL / f"runner-{first}.log", "a")
    subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_run", *keys], cwd=submit_dir, stdin=subprocess.DEVNULL,
                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    print(first if options.get("parsable") else f"Submitted batch job {first}", flush=True)


# ---------------------------------------------------------------------------------------------------------------- the runner
def run_jobs(keys: list[str]) -> None:
    for key in keys:
        with locked("cluster"):  # room for one job at a time
            run_job(key)


def job_env(rec: dict) -> dict:
    nodes, ntasks = rec["nodes"], rec["ntasks"]
    per_node = -(-ntasks // nodes)
    env = {**os.environ, "SLURM_JOB_ID": str(rec["job_id"]), "SLURM_JOBID": str(rec["job_id"]), "SLURM_JOB_NAME": rec["name"],
           "SLURM_JOB_NODELIST": nodelist(nodes), "SLURM_NODELIST": nodelist(nodes), "SLURM_JOB_NUM_NODES": str(nodes),
           "SLURM_NNODES": str(nodes), "SLURM_NTASKS": str(ntasks), "SLURM_NPROCS": str(ntasks),
           "SLURM_NTASKS_PER_NODE": str(per_node), "SLURM_TASKS_PER_NODE": f"{per_node}(x{nodes})", "SLURM_PROCID": "0",
           "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURMD_NODENAME": f"{NODE_PREFIX}1", "SLURM_SUBMIT_DIR": rec["submit_dir"],
           "SLURM_SUBMIT_HOST": "localhost", "SLURM_CLUSTER_NAME": "fake", "SLURM_RESTART_COUNT": str(rec["restarts"]),
           "SLURM_JOB_PARTITION": str(rec["options"].get("partition", "fake")), "FAKE_SLURM_JOB": rec["key"]}
    if rec["array_job_id"] is not None:
        env.update(SLURM_ARRAY_JOB_ID=str(rec["array_job_id"]), SLURM_ARRAY_TASK_ID=str(rec["array_task_id"]),
                   SLURM_ARRAY_TASK_COUNT=str(rec["array_count"]))
    if "cpus-per-task" in rec["options"]:
        env["SLURM_CPUS_PER_TASK"] = str(rec["options"]["cpus-per-task"])
    return env


def job_processes(rec: dict) -> list[int]:
    """The pids of the job's step tasks (registered by srun)."""
    pids = []
    for f in (job_dir(rec["key"]) / "steps").glob("*.json"):
        try:
            pids += json.loads(f.read_text())["pids"]
        except (OSError, ValueError):
            pass
    return pids


def kill_job(rec: dict, proc: subprocess.Popen) -> None:
    """End a job as SLURM does: SIGTERM to everything of it, SIGKILL to what is left after KillWait."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in job_processes(rec):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.time() + KILL_WAIT_S
        while time.time() < deadline and (proc.poll() is None or any(_alive(p) for p in job_processes(rec))):
            time.sleep(POLL_S)
        if proc.poll() is not None and not any(_alive(p) for p in job_processes(rec)):
            return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its srun) is not running
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def run_job(key: str) -> None:
    while True:
        rec = load(key)
        d = job_dir(key)
        if (d / "cancel").exists():  # cancelled while pending
            rec["state"] = "CANCELLED"
            save(rec)
            event(key, "end CANCELLED (pending)")
            return
        for stale in ("requeue", "warned"):
            (d / stale).unlink(missing_ok=True)
        env = job_env(rec)
        opts = rec["options"]
        default_out = "slurm-%A_%a.out" if rec["array_job_id"] is not None else "slurm-%j.out"
        out_path = Path(rec["submit_dir"]) / expand_pattern(str(opts.get("output", default_out)), env)
        mode = "a" if opts.get("open-mode") == "append" or rec["restarts"] > 0 else "w"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        stdout = open(out_path, mode)
        stderr = stdout
        if opts.get("error"):
            err_path = Path(rec["submit_dir"]) / expand_pattern(str(opts["error"]), env)
            err_path.parent.mkdir(parents=True, exist_ok=True)
            stderr = open(err_path, mode)
        proc = subprocess.Popen(["bash", rec["script"], *rec["args"]], cwd=rec["submit_dir"], env=env, stdin=subprocess.DEVNULL,
                                stdout=stdout, stderr=stderr, start_new_session=True)
        rec.update(state="RUNNING", batch_pid=proc.pid, started=time.time())
        save(rec)
        event(key, f"start restart={rec['restarts']} job_id={rec['job_id']}")
        reason = None
        while proc.poll() is None:
            if (d / "requeue").exists():
                reason = "requeue"
            elif (d / "cancel").exists():
                reason = "cancel"
            elif (d / "warned").exists() and time.time() > float((d / "warned").read_text()) + GRACE_S:
                reason = "timeout"
            if reason:
                kill_job(rec, proc)
                break
            time.sleep(POLL_S)
        rc = proc.wait()
        stdout.close()
        if stderr is not stdout:
            stderr.close()
        if reason is None and (d / "requeue").exists():  # asked for as the script's last act
            reason = "requeue"
        for f in (d / "steps").glob("*.json"):
            f.unlink()
        rec = load(key)
        rec.update(batch_pid=None, exit_code=rc)
        if reason == "requeue":
            rec.update(state="PENDING", restarts=rec["restarts"] + 1)
            save(rec)
            event(key, f"requeued exit={rc} restarts={rec['restarts']}")
            continue
        rec["state"] = {"cancel": "CANCELLED", "timeout": "TIMEOUT"}.get(reason) or ("COMPLETED" if rc == 0 else "FAILED")
        save(rec)
        event(key, f"end {rec['state']} exit={rc}")
        return


# ---------------------------------------------------------------------------------------------------------------- srun
def srun(argv: list[str]) -> None:
    opts, command = parse_options(argv)
    key = os.environ.get("FAKE_SLURM_JOB")
    if not key:
        fail("this fake srun runs job steps inside a fake sbatch job only")
    if not command:
        fail("no command given")
    nodes = int(opts.get("nodes", os.environ["SLURM_JOB_NUM_NODES"]))
    if "ntasks" in opts:
        ntasks = int(opts["ntasks"])
    elif "ntasks-per-node" in opts:
        ntasks = nodes * int(opts["ntasks-per-node"])
    else:
        ntasks = int(os.environ["SLURM_NTASKS"])
    per_node = -(-ntasks // nodes)
    steps = job_dir(key) / "steps"
    steps.mkdir(parents=True, exist_ok=True)
    with locked(f"steps-{key}"):
        counter = steps / "next"
        step = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(step + 1))
    files, tasks = [], []
    for t in range(ntasks):
        node = t // per_node
        env = {**os.environ, "SLURM_PROCID": str(t), "SLURM_LOCALID": str(t % per_node), "SLURM_NODEID": str(node),
               "SLURMD_NODENAME": f"{NODE_PREFIX}{node + 1}", "SLURM_STEP_ID": str(step), "SLURM_STEPID": str(step),
               "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_STEP_NUM_NODES": str(nodes), "SLURM_STEP_NODELIST": nodelist(nodes),
               "SLURM_STEP_TASKS_PER_NODE": f"{per_node}(x{nodes})", "SLURM_NTASKS": str(ntasks), "SLURM_NPROCS": str(ntasks)}
        streams = {}
        for name in ("output", "error"):
            if opts.get(name):
                path = Path(expand_pattern(str(opts[name]), env, task=t))
                path.parent.mkdir(parents=True, exist_ok=True)
                streams[name] = open(path, "a")
                files.append(streams[name])
        tasks.append(subprocess.Popen(command, env=env, stdout=streams.get("output"),
                                      stderr=streams.get("error", streams.get("output"))))
    (steps / f"{step}.json").write_text(json.dumps({"pids": [p.pid for p in tasks]}))

    def forward(sig, frame):
        for p in tasks:
            if p.poll() is None:
                p.send_signal(sig)

    for name in FORWARDED:
        signal.signal(getattr(signal, name), forward)
    kill_on_bad_exit = str(opts.get("kill-on-bad-exit", "0")) not in ("0", "False")
    while any(p.poll() is None for p in tasks):
        if kill_on_bad_exit and any(p.returncode not in (None, 0) for p in tasks):
            for p in tasks:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.1)
    for f in files:
        f.close()
    (steps / f"{step}.json").unlink(missing_ok=True)
    codes = [p.returncode if p.returncode >= 0 else 128 - p.returncode for p in tasks]
    raise SystemExit(max(codes))


# ---------------------------------------------------------------------------------------------------------------- queries
def sacct(argv: list[str]) -> None:
    opts, _ = parse_options(argv, {"-o": "format"})
    fields = str(opts.get("format", "JobID,JobName,State,ExitCode")).split(",")
    recs = select(opts["jobs"]) if opts.get("jobs") else all_jobs()

    def value(rec, field):
        f = field.split("%")[0].lower()
        return {"jobid": rec["key"], "jobidraw": str(rec["job_id"]), "jobname": rec["name"], "state": rec["state"],
                "nodelist": "None assigned" if rec["state"] == "PENDING" else nodelist(rec["nodes"]),
                "exitcode": f"{rec['exit_code'] or 0}:0", "restarts": str(rec["restarts"]), "nnodes": str(rec["nodes"]),
                "ntasks": str(rec["ntasks"])}.get(f, "")

    rows = [[value(r, f) for f in fields] for r in recs]
    sep = "|" if opts.get("parsable2") or opts.get("parsable") else " "
    if not opts.get("noheader"):
        print(sep.join(f.split("%")[0] for f in fields))
    for row in rows:
        print(sep.join(row))


def squeue(argv: list[str]) -> None:
    opts, _ = parse_options(argv, {"-o": "format"})
    recs = [r for r in (select(opts["jobs"]) if opts.get("jobs") else all_jobs()) if r["state"] in ("PENDING", "RUNNING")]
    fmt = str(opts.get("format", "%.18i %.9P %.8j %.8u %.2t %.6D %R"))
    short = {"PENDING": "PD", "RUNNING": "R"}

    def render(rec, spec):
        return {"i": rec["key"], "A": str(rec["array_job_id"] or rec["job_id"]), "T": rec["state"], "t": short[rec["state"]],
                "j": rec["name"], "N": nodelist(rec["nodes"]), "D": str(rec["nodes"]), "P": "fake", "u": os.environ.get("USER", ""),
                "R": nodelist(rec["nodes"]) if rec["state"] == "RUNNING" else "(Priority)"}.get(spec, "")

    if not opts.get("noheader"):
        print("JOBID PARTITION NAME USER ST NODES NODELIST(REASON)")
    for rec in recs:
        print(re.sub(r"%\.?\d*([a-zA-Z])", lambda m: render(rec, m.group(1)), fmt))


def scontrol(argv: list[str]) -> None:
    if argv[:2] == ["show", "hostnames"]:
        text = argv[2] if len(argv) > 2 else os.environ.get("SLURM_JOB_NODELIST", "")
        print("\n".join(expand_nodelist(text)))
        return
    if argv[:2] == ["show", "job"] and len(argv) > 2:
        for rec in select([argv[2]]) or fail(f"Invalid job id specified: {argv[2]}"):
            print(f"JobId={rec['job_id']} ArrayJobId={rec['array_job_id'] or ''} ArrayTaskId={rec['array_task_id'] or ''} "
                  f"JobName={rec['name']}\n   JobState={rec['state']} Restarts={rec['restarts']} BatchFlag=1 "
                  f"ExitCode={rec['exit_code'] or 0}:0\n   NumNodes={rec['nodes']} NumTasks={rec['ntasks']} "
                  f"NodeList={nodelist(rec['nodes'])}")
        return
    if argv[:1] == ["requeue"] and len(argv) > 1:
        ids = [i for a in argv[1:] for i in a.split(",")]
        recs = select(ids)
        if not recs:
            fail(f"Invalid job id specified: {','.join(ids)}")
        for rec in recs:  # (an array's first task has the array's id as its job id: that id names the whole array)
            if rec["state"] == "RUNNING":
                request(rec["key"], "requeue")
                event(rec["key"], "requeue requested")
        return
    fail(f"this fake scontrol does not do: {' '.join(argv)}")


def scancel(argv: list[str]) -> None:
    opts, ids = parse_options(argv)
    recs = select(ids)
    if not recs:
        fail(f"Invalid job id specified: {' '.join(ids)}")
    for rec in recs:
        if "signal" not in opts:
            if rec["state"] not in ("PENDING", "RUNNING"):
                continue
            request(rec["key"], "cancel")
            event(rec["key"], "cancel requested")
            continue
        deliver(rec, signum(opts["signal"]), batch=bool(opts.get("batch") or opts.get("full")),
                steps=not opts.get("batch") or bool(opts.get("full")))


def deliver(rec: dict, sig: int, batch: bool, steps: bool) -> None:
    """A signal to a job: its batch shell and/or its steps' tasks (not srun itself), as slurmd does."""
    rec = load(rec["key"])
    targets = ([rec["batch_pid"]] if batch and rec["batch_pid"] else []) + (job_processes(rec) if steps else [])
    for pid in targets:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    event(rec["key"], f"signal {signal.Signals(sig).name} to {'batch' if batch else ''}{'+' if batch and steps else ''}"
                      f"{'steps' if steps else ''} ({len(targets)} processes)")


def timelimit(argv: list[str]) -> None:
    """The test's clock: the job's time limit is now its --signal delay away."""
    for rec in select(argv) or fail(f"Invalid job id specified: {' '.join(argv)}"):
        if rec["state"] != "RUNNING":
            fail(f"job {rec['key']} is {rec['state']}, not RUNNING")
        spec = parse_signal(rec["options"].get("signal"))
        request(rec["key"], "warned", str(time.time()))
        event(rec["key"], f"time limit near (--signal={rec['options'].get('signal')})")
        if spec:
            deliver(rec, signum(spec["sig"]), batch=spec["batch"], steps=not spec["batch"])


COMMANDS = {"sbatch": sbatch, "srun": srun, "sacct": sacct, "squeue": squeue, "scontrol": scontrol, "scancel": scancel,
            "timelimit": timelimit, "_run": run_jobs}

if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if "FAKE_SLURM_SPOOL" not in os.environ:
        fail("FAKE_SLURM_SPOOL is not set")
    COMMANDS[command](args)
