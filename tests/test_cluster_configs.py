"""The cluster configs in cluster/: the launcher YAML passes Ray's own validation, the KubeRay
manifests carry what KubeRay needs, the Dockerfile matches the installed Ray, every cluster
puts the experiments' storage on a file system all its nodes share (ktune's storage is a
path: no s3:// anywhere), and no file turns token authentication off or publishes the
dashboard.

No cloud, no cluster, no Docker: Ray's validator and schema are the ones installed in .venv.
"""

from __future__ import annotations

import copy
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHER = CLUSTER / "aws-gpu.yaml"
RAYCLUSTER = CLUSTER / "kuberay-raycluster.yaml"
RAYJOB = CLUSTER / "kuberay-rayjob.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
README = CLUSTER / "README.md"
DOCKERIGNORE = REPO / ".dockerignore"
SHARED = Path("/mnt/ktune")  # where every node of every cluster here sees the shared storage
STORAGE = SHARED / "results"  # the experiments' storage on it

DASHBOARD_PORT = 8265
WORLD = {"0.0.0.0/0", "::/0"}
GPU_FAMILIES = ("g", "p")  # EC2 GPU instance families: g4dn, g5, g6, p3, p4d, p5 ...


def _launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _walk(node, path=()):
    """Every (path, value) of a parsed YAML tree, depth first."""
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, path + (i,))


def _project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _docker_volumes(run_options: list[str]) -> dict[Path, Path]:
    """host path -> container path of the `-v`/`--volume` options of a docker run."""
    words = shlex.split(" ".join(run_options))
    volumes = {}
    for i, word in enumerate(words):
        spec = None
        if word in ("-v", "--volume"):
            spec = words[i + 1]
        elif word.startswith("--volume="):
            spec = word.split("=", 1)[1]
        if spec:
            host, container = spec.split(":")[:2]
            volumes[Path(host)] = Path(container)
    return volumes


def _load_experiment(tmp_path: Path, text: str, overrides: dict | None = None):
    from ktune.config import load_config

    raw = yaml.safe_load(text)
    raw.update(overrides or {})
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path)


# --- (a) the Ray cluster launcher config -------------------------------------------------


def test_launcher_config_passes_rays_own_validation():
    """What `ray up` does before touching AWS: fill in the provider's defaults, then
    validate against ray/autoscaler/ray-schema.json (plus Ray's extra checks)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(_launcher()))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_rays_validator_is_not_a_rubber_stamp():
    """The same validator rejects a broken copy of the file, so passing it means something."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = _launcher()
    bad["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5  # must be an integer
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
    typo = _launcher()
    typo["head_start_ray_comands"] = typo.pop("head_start_ray_commands")  # unknown key
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(typo))


def test_launcher_has_cpu_head_and_autoscaling_gpu_workers():
    cfg = _launcher()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head node must not offer GPUs"
    assert not head["node_config"]["InstanceType"].startswith(GPU_FAMILIES), (
        "the head node is a CPU instance"
    )
    workers = {name: t for name, t in types.items() if name != cfg["head_node_type"]}
    gpu_workers = {
        name: t
        for name, t in workers.items()
        if t["resources"].get("GPU", 0) >= 1
        and t["node_config"]["InstanceType"].startswith(GPU_FAMILIES)
    }
    assert gpu_workers, "no worker node type with GPU instances"
    for name, t in gpu_workers.items():
        assert t.get("min_workers", 0) == 0, f"{name}: GPU workers scale from zero"
        assert t["max_workers"] > 0, f"{name}: max_workers must allow workers"
        assert t["max_workers"] <= cfg["max_workers"], f"{name}: above the global max_workers"


def test_launcher_runs_the_ktune_image_without_installing_at_start():
    cfg = _launcher()
    image = cfg["docker"]["image"]
    assert image.endswith(f"/ktune:{_project_version()}-gpu"), image
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert cfg.get(key) == [], f"{key}: ktune and its pinned deps come from the image"
    assert "TF_USE_LEGACY_KERAS=1" in " ".join(cfg["docker"]["run_options"])


def test_launcher_keeps_token_auth_on_every_node():
    cfg = _launcher()
    run_options = shlex.split(" ".join(cfg["docker"]["run_options"]))
    env = {
        run_options[i + 1].split("=", 1)[0]: run_options[i + 1].split("=", 1)[1]
        for i, opt in enumerate(run_options)
        if opt in ("--env", "-e")
    }
    assert env.get("RAY_AUTH_MODE") == "token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cfg[key] if "ray start" in c]
        assert start, f"{key}: no `ray start`"
        assert all("RAY_AUTH_MODE=token" in c for c in start), f"{key}: token auth not set"
    # The token file the nodes read is the folder that `ray up` copies to every node.
    token_path = env["RAY_AUTH_TOKEN_PATH"]
    mounted = {remote.replace("~", "/home/ray", 1).rstrip("/") for remote in cfg["file_mounts"]}
    assert str(Path(token_path).parent) in mounted, (token_path, mounted)


def test_launcher_mounts_the_shared_storage_on_every_node_and_into_the_container():
    """ktune's storage is a path every node shares: the launcher mounts the EFS file system
    on the host of every node (initialization_commands run on head and workers before the
    container starts) and passes it into the Ray container at the same path."""
    cfg = _launcher()
    volumes = _docker_volumes(cfg["docker"]["run_options"])
    assert volumes.get(SHARED) == SHARED, f"{SHARED} is not mounted into the container: {volumes}"
    # head and worker node types set no run_options of their own that would replace these
    for name, node_type in cfg["available_node_types"].items():
        assert "docker" not in node_type, f"{name}: its own docker settings"
    assert "head_node" not in cfg and "worker_nodes" not in cfg

    init = " ; ".join(cfg["initialization_commands"])
    region = cfg["provider"]["region"]
    mount = re.search(r"mount -t nfs4 (?:-o (\S+) )?(\S+):/ (\S+)", init)
    assert mount, f"no NFS mount in initialization_commands: {init}"
    options, server, target = mount.groups()
    assert Path(target) == SHARED, target
    assert server == f"<EFS_ID>.efs.{region}.amazonaws.com", f"{server}: not EFS in {region}"
    assert options and "nfsvers=4.1" in options and "hard" in options.split(","), options
    # A failed mount must fail the node's set-up, not leave an empty local folder behind.
    assert f"mountpoint -q {SHARED} || sudo mount" in init
    assert re.search(rf"chown 1000:100 .*{STORAGE}", init), "the container user cannot write"
    # the container's setup commands stay empty: the mount happens on the host
    assert cfg["setup_commands"] == []


def test_launcher_and_manifests_never_name_cloud_storage():
    """ktune turns `storage: s3://...` into a local folder, so no config may suggest it."""
    for path in (LAUNCHER, RAYCLUSTER, RAYJOB):
        for doc in _docs(path):
            for where, value in _walk(doc):
                if isinstance(value, str):
                    assert not re.search(r"\b(s3|gs|gcs|az|abfss?)://", value), (
                        f"{path.name}: {'.'.join(map(str, where))} = {value!r}"
                    )
    worker_profile = _launcher()["available_node_types"]["gpu_worker"]["node_config"]
    arn = worker_profile["IamInstanceProfile"]["Arn"]
    assert arn.endswith(":instance-profile/ktune-ray-worker"), arn


def test_launcher_does_not_publish_the_dashboard():
    cfg = _launcher()
    for rule in cfg["provider"].get("security_group", {}).get("IpPermissions", []):
        ranges = {r.get("CidrIp") for r in rule.get("IpRanges", [])} | {
            r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])
        }
        low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
        covers_dashboard = low == -1 or low <= DASHBOARD_PORT <= high
        assert not (covers_dashboard and ranges & WORLD), f"dashboard open to the world: {rule}"
    options = " ".join(cfg["docker"]["run_options"])
    assert not re.search(rf"(-p|--publish)[ =]\S*{DASHBOARD_PORT}", options)


# --- (b) the KubeRay manifests ----------------------------------------------------------


def _check_ray_cluster_spec(spec: dict, where: str) -> None:
    """The fields KubeRay (ray.io/v1) requires of a RayCluster spec, and ktune's choices."""
    assert spec["rayVersion"] == ray.__version__, f"{where}: rayVersion != installed Ray"
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token auth off"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict), f"{where}: headGroupSpec.rayStartParams"
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), (
        f"{where}: rayStartParams values are strings"
    )
    head_containers = head["template"]["spec"]["containers"]
    assert head_containers[0]["image"], f"{where}: head image"
    head_limits = head_containers[0].get("resources", {}).get("limits", {})
    assert "nvidia.com/gpu" not in head_limits, f"{where}: the head is a CPU pod"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: head service exposed"
    assert not head.get("enableIngress", False), f"{where}: head ingress"

    groups = spec["workerGroupSpecs"]
    assert groups, f"{where}: no workerGroupSpecs"
    gpus = 0
    for g in groups:
        name = g["groupName"]
        assert name, f"{where}: groupName"
        replicas, low, high = g["replicas"], g["minReplicas"], g["maxReplicas"]
        assert all(isinstance(n, int) for n in (replicas, low, high)), f"{where}/{name}"
        assert 0 <= low <= replicas <= high and high >= 1, f"{where}/{name}: replica bounds"
        assert isinstance(g["rayStartParams"], dict), f"{where}/{name}: rayStartParams"
        container = g["template"]["spec"]["containers"][0]
        assert container["image"] == head_containers[0]["image"], f"{where}/{name}: image"
        gpu = int(str(container["resources"]["limits"].get("nvidia.com/gpu", 0)))
        gpus = max(gpus, gpu)
    assert gpus >= 1, f"{where}: no worker group with nvidia.com/gpu in its limits"


def test_raycluster_manifest():
    docs = _docs(RAYCLUSTER)
    rc = _one(docs, "RayCluster")
    assert rc["apiVersion"] == "ray.io/v1"
    assert rc["metadata"]["name"]
    _check_ray_cluster_spec(rc["spec"], RAYCLUSTER.name)


def test_raycluster_mounts_one_shared_volume_in_every_pod():
    """`storage: /mnt/ktune/results` (cluster/README.md) is on a ReadWriteMany volume that
    the head pod and every worker pod mount at /mnt/ktune."""
    docs = _docs(RAYCLUSTER)
    spec = _one(docs, "RayCluster")["spec"]
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in spec["workerGroupSpecs"]
    ]
    claims = set()
    for pod in pods:
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = [m for m in pod["containers"][0]["volumeMounts"] if Path(m["mountPath"]) == SHARED]
        assert len(mounts) == 1, f"{SHARED} is not mounted in every pod"
        claims.add(volumes[mounts[0]["name"]]["persistentVolumeClaim"]["claimName"])
    assert len(claims) == 1, f"pods mount different volumes at {SHARED}: {claims}"
    (claim,) = claims
    pvc = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert [d["metadata"]["name"] for d in pvc] == [claim]
    assert pvc[0]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_rayjob_manifest_runs_ktune_with_the_shipped_experiment(tmp_path):
    docs = _docs(RAYJOB)
    job = _one(docs, "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    entrypoint = spec["entrypoint"]
    assert "ktune run" in entrypoint and "--address auto" in entrypoint, entrypoint
    _check_ray_cluster_spec(spec["rayClusterSpec"], RAYJOB.name)

    # The experiment path of the entrypoint is a file of a ConfigMap mounted in the head pod
    # (the job's driver runs there), and that ConfigMap is in the same file.
    exp_path = Path(shlex.split(entrypoint)[2])
    head_pod = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in head_pod["containers"][0]["volumeMounts"]}
    config_maps = {
        v["name"]: v["configMap"]["name"] for v in head_pod["volumes"] if "configMap" in v
    }
    volumes = [n for n, p in mounts.items() if Path(p) == exp_path.parent and n in config_maps]
    assert len(volumes) == 1, f"{exp_path.parent} is not a ConfigMap mounted in the head pod"
    name = config_maps[volumes[0]]
    cm = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
    assert cm, f"ConfigMap {name} is not in {RAYJOB.name}"
    experiment = cm[0]["data"][exp_path.name]

    # ... and it is a valid ktune experiment whose storage every pod shares.
    from ktune.config import load_config

    (tmp_path / exp_path.name).write_text(experiment)
    cfg = load_config(tmp_path / exp_path.name)
    assert cfg.resources.gpu > 0
    worker_mounts = [
        m["mountPath"]
        for g in spec["rayClusterSpec"]["workerGroupSpecs"]
        for m in g["template"]["spec"]["containers"][0].get("volumeMounts", [])
    ]
    shared = [p for p in worker_mounts if Path(cfg.storage).is_relative_to(p)]
    assert shared and Path(cfg.storage).is_relative_to(mounts["ktune-results"]), (
        f"storage {cfg.storage} is not on the volume that head and workers share"
    )
    assert Path(cfg.storage) == STORAGE, cfg.storage


def test_rayjob_uses_the_same_gpu_worker_group_as_the_raycluster():
    rc = _one(_docs(RAYCLUSTER), "RayCluster")
    job = _one(_docs(RAYJOB), "RayJob")
    assert job["spec"]["rayClusterSpec"]["workerGroupSpecs"] == rc["spec"]["workerGroupSpecs"]


def test_kuberay_manifests_expose_nothing_outside_the_cluster():
    for path in (RAYCLUSTER, RAYJOB):
        for doc in _docs(path):
            assert doc["kind"] not in ("Ingress", "Route"), f"{path.name}: {doc['kind']}"
            if doc["kind"] == "Service":
                assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", path.name
            for where, value in _walk(doc):
                if (
                    where
                    and where[-1] in ("serviceType", "type")
                    and value
                    in (
                        "LoadBalancer",
                        "NodePort",
                    )
                ):
                    pytest.fail(f"{path.name}: {'.'.join(map(str, where))} = {value}")
                if where and where[-1] == "hostPort":
                    pytest.fail(f"{path.name}: hostPort {value}")


# --- (c) the Dockerfile -----------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_base_image_is_the_installed_ray_on_python_311_gpu():
    instructions = _dockerfile_instructions()
    args = {}
    for word, rest in instructions:
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
    (base,) = [rest for word, rest in instructions if word == "FROM"]
    base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], base)
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d+)-(gpu|cu\d+)", base.split()[0])
    assert m, f"not a Ray GPU image: {base}"
    assert m.group(1) == ray.__version__, f"{base}: Ray {m.group(1)} != installed {ray.__version__}"
    assert m.group(2) == f"{sys.version_info.major}{sys.version_info.minor}" == "311"


def test_dockerfile_installs_the_project_and_sets_legacy_keras():
    instructions = _dockerfile_instructions()
    env = {}
    for word, rest in instructions:
        if word == "ENV":
            for item in shlex.split(rest):
                if "=" in item:
                    key, value = item.split("=", 1)
                    env[key] = value
    assert env.get("TF_USE_LEGACY_KERAS") == "1"
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert re.search(r"pip install\b[^&;]*\s\.(\s|$)", runs), "no `pip install .`"
    assert not re.search(r"pip install\b[^&;]*\s-e\s", runs), "an image installs, not edits"
    # Everything COPY'd exists in the repository (the build context is its root).
    for word, rest in instructions:
        if word == "COPY":
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            for src in parts[:-1]:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"


def _dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule for a path of the build context: a pattern matches the path or one of
    its parent folders; `**` matches any number of folders (none included); the last
    matching pattern wins (`!` re-includes)."""
    import fnmatch

    def matches(pattern: str, candidate: str) -> bool:
        if pattern.startswith("**/"):
            parts = candidate.split("/")
            return any(
                fnmatch.fnmatchcase("/".join(parts[i:]), pattern[3:]) for i in range(len(parts))
            )
        return fnmatch.fnmatchcase(candidate, pattern)

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(matches(pattern, prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    patterns = _dockerignore_patterns()
    for path in (
        ".venv/bin/python",
        "results/quickstart/best.json",
        "models/tiny_bert/saved_model.pb",
        "ktune.egg-info/PKG-INFO",
        ".git/HEAD",
        "__pycache__/x.pyc",
        "ktune/__pycache__/cli.cpython-311.pyc",
        "ktune/trainables/__pycache__/x.pyc",
        ".pytest_cache/v/cache/nodeids",
        "tests/.pytest_cache/README.md",
        "bench/results/run.json",
    ):
        assert _ignored(path, patterns), f".dockerignore lets {path} into the build context"
    # ... and nothing the Dockerfile COPYs is ignored.
    for word, rest in _dockerfile_instructions():
        if word == "COPY":
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            for src in parts[:-1]:
                assert not _ignored(src.rstrip("/"), patterns), f"COPY {src}: in .dockerignore"
                if (REPO / src).is_dir():
                    for f in (REPO / src).rglob("*.py"):
                        if "__pycache__" not in f.parts:
                            rel = f.relative_to(REPO).as_posix()
                            assert not _ignored(rel, patterns), f"{rel}: in .dockerignore"


# --- everything in cluster/ ---------------------------------------------------------------


def test_no_file_turns_token_auth_off():
    disabled = re.compile(r"RAY_AUTH_MODE\W{0,4}disabled", re.IGNORECASE)
    for path in sorted(CLUSTER.iterdir()):
        if path.is_file():
            assert not disabled.search(path.read_text()), f"{path.name} disables token auth"
    for path in (RAYCLUSTER, RAYJOB):
        for doc in _docs(path):
            for _, value in _walk(doc):
                if isinstance(value, dict) and value.get("name") == "RAY_AUTH_MODE":
                    assert value.get("value") == "token", f"{path.name}: {value}"
                if isinstance(value, dict) and "authOptions" in value:
                    assert value["authOptions"].get("mode") == "token", path.name


def test_readme_walks_through_the_documented_steps():
    text = README.read_text()
    for step in (
        "docker build -f cluster/Dockerfile",
        "ray up cluster/aws-gpu.yaml",
        "ray dashboard cluster/aws-gpu.yaml",
        "http://127.0.0.1:8265",
        "RAY_AUTH_MODE=token",
        "RAY_AUTH_TOKEN_PATH",
        "RAY_AUTH_TOKEN",
        "ray get-auth-token",
        "Authorization: Bearer",
        "ktune submit",
        "--follow",
        "ktune jobs --address",
        "ray rsync-down cluster/aws-gpu.yaml",
        "--storage /mnt/ktune/results",
        "ray down cluster/aws-gpu.yaml",
        "kubectl apply -f cluster/kuberay-raycluster.yaml",
        "kubectl apply -f cluster/kuberay-rayjob.yaml",
        "kubectl port-forward",
    ):
        assert step in text, f"cluster/README.md does not show {step!r}"


def _readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.DOTALL)


def test_readme_experiments_store_on_the_shared_mount_or_a_bucket(tmp_path):
    """Every experiment snippet of the README, applied to the quickstart, is a valid ktune
    experiment whose storage is the shared mount (the path the launcher passes into the
    container and the KubeRay pods mount) or, for the S3 alternative, an s3:// URI that
    ktune keeps as written; every `--storage` URI of a command parses too."""
    from ktune.storage import check_uri

    text = README.read_text()
    snippets = [b for b in _readme_blocks("yaml") if re.search(r"^ *storage:", b, re.MULTILINE)]
    assert len(snippets) >= 3, "expected the AWS, the S3 and the KubeRay experiment snippets"
    quickstart = (REPO / "examples" / "quickstart.yaml").read_text()
    launcher_volumes = _docker_volumes(_launcher()["docker"]["run_options"])
    buckets = 0
    for snippet in snippets:
        overrides = yaml.safe_load(snippet)
        cfg = _load_experiment(tmp_path, quickstart, overrides)
        assert cfg.resources.gpu > 0
        if cfg.remote:
            assert cfg.storage == overrides["storage"] and cfg.storage.startswith("s3://")
            buckets += 1
            continue
        storage = Path(cfg.storage)
        assert storage == STORAGE, f"README snippet storage {storage}"
        assert any(storage.is_relative_to(c) for c in launcher_volumes.values())
    assert buckets == 1, "expected one S3 experiment snippet"
    for uri in re.findall(r"--storage\s+(\S*://\S*)", text):
        check_uri("--storage", uri)


def test_readme_fetches_the_export_from_the_shared_mount():
    """`ray rsync-down` as the installed Ray parses it (CLUSTER_CONFIG_FILE SOURCE TARGET),
    from the quickstart's export folder on the shared storage."""
    from ray.scripts.scripts import rsync_down

    commands = [
        line.strip()
        for block in _readme_blocks("bash")
        for line in block.splitlines()
        if line.strip().startswith("ray rsync-down")
    ]
    assert commands, "README shows no `ray rsync-down`"
    for command in commands:
        args = shlex.split(command.split("#")[0])[2:]
        ctx = rsync_down.make_context("rsync-down", list(args))
        assert Path(ctx.params["cluster_config_file"]) == Path("cluster/aws-gpu.yaml")
        source = ctx.params["source"]
        assert Path(source) == STORAGE / "quickstart" / "export", source
        # with a docker cluster, Ray copies a folder's contents only for a trailing slash
        assert source.endswith("/") and ctx.params["target"].endswith("/"), command


def test_readme_token_section_matches_ktune_and_ray():
    text = README.read_text()
    section = text.split("## How the token reaches the client", 1)[1].split("\n## ", 1)[0]
    ktune = section.split("`ktune submit` and `ktune jobs` send the token themselves", 1)
    assert len(ktune) == 2, "the token section does not say how ktune sends the token"
    paragraph = ktune[1].split("\n\n", 1)[0]
    order = [
        paragraph.find(k)
        for k in ("`RAY_AUTH_TOKEN`", "`RAY_AUTH_TOKEN_PATH`", "`~/.ray/auth_token`")
    ]
    assert -1 not in order and order == sorted(order), paragraph
    assert "error that names the" in paragraph, "an unreadable RAY_AUTH_TOKEN_PATH is an error"
    assert re.search(r"Ray's own CLI \(`ray job", section)
    assert "additionally needs `RAY_AUTH_MODE=token`" in section
