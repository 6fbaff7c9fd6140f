#!/usr/bin/env python3
"""Structure checks of the deployment kit, for scripts/check-deploy.sh.

No Docker engine or Kubernetes cluster runs in CI, so the files are checked
by reading them:

  compose ROOT      deploy/compose.yaml: images, health checks, dependencies
                    and their conditions, bind-mounted files, host ports, and
                    that Prometheus/Grafana point at services that exist.
  kustomize ROOT    deploy/k8s/: the kustomization lists exactly the
                    manifests there; the pod specs are hardened; the grace
                    period covers preStop + proxy.shutdown_grace_seconds; the
                    UID matches the Dockerfile's USER; admin stays internal.
  manifests ROOT    prints the manifests for kubernetes-validate, one a line.
  dockerfile ROOT   numeric USER, STOPSIGNAL SIGTERM, HEALTHCHECK via
                    `gateway health` (hadolint does the rest).
  configs ROOT BIN  `gateway check-config` on deploy/compose/gateway.toml and
                    deploy/k8s/gateway.toml with the environment their
                    deployment gives them (compose environment, the Secret
                    example); host names of upstream targets, which only
                    resolve inside the stack, are replaced by 127.0.0.1.
  self-test ROOT    breaks copies of the files one way at a time and expects
                    each check to fail (and the real files to pass).

Each command prints its problems, one a line, and exits 1 if there are any.
"""

import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

DEPENDS_ON_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
NOT_MANIFESTS = {"kustomization.yaml", "kustomization.yml"}


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ---------------------------------------------------------------- compose


def expand(value):
    """${VAR:-default} / ${VAR} as compose would, from this environment."""

    def one(m):
        name, default = m.group(1), m.group(3)
        return os.environ.get(name) or (default or "")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?-([^}]*))?\}", one, str(value))


def env_of(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: expand(v) for k, v in env.items()}


def command_of(svc):
    cmd = svc.get("command")
    if cmd is None:
        return []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def is_gateway_image(svc):
    return "build" in svc or str(svc.get("image", "")).startswith("gateway")


def is_gateway_server(svc):
    """Runs `gateway serve` (the image's default command)."""
    cmd = command_of(svc)
    return is_gateway_image(svc) and (not cmd or cmd[0] == "serve")


def has_healthcheck(svc):
    hc = svc.get("healthcheck")
    return isinstance(hc, dict) and not hc.get("disable") and bool(hc.get("test"))


def depends(svc):
    d = svc.get("depends_on") or {}
    if isinstance(d, list):
        return {name: "service_started" for name in d}
    return {name: (v or {}).get("condition", "service_started") for name, v in d.items()}


def host_ports(svc):
    """(published port, protocol) of each published port."""
    out = []
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            if p.get("published") is not None:
                out.append((str(p["published"]), p.get("protocol", "tcp")))
            continue
        spec, _, proto = str(p).partition("/")
        parts = spec.rsplit(":", 2)
        if len(parts) >= 2:
            out.append((parts[-2], proto or "tcp"))
    return out


def bind_sources(svc):
    """Host paths of bind mounts (short syntax ./x:/y or long type: bind)."""
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):
            if v.get("type") == "bind":
                out.append(v.get("source", ""))
            continue
        src = str(v).split(":", 1)[0]
        if src.startswith((".", "/", "~")):
            out.append(src)
    return out


def named_volumes(svc):
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):
            if v.get("type") == "volume":
                out.append(v.get("source"))
            continue
        parts = str(v).split(":")
        if len(parts) > 1 and not parts[0].startswith((".", "/", "~")):
            out.append(parts[0])
    return out


def check_compose(root):
    deploy = os.path.join(root, "deploy")
    path = os.path.join(deploy, "compose.yaml")
    problems = []
    try:
        doc = load_yaml(path)
    except (OSError, yaml.YAMLError) as e:
        return [f"{path}: {e}"]
    services = (doc or {}).get("services") or {}
    if not services:
        return [f"{path}: no services"]
    declared_volumes = set((doc.get("volumes") or {}).keys())

    for name, svc in services.items():
        where = f"services.{name}"
        if not isinstance(svc, dict):
            problems.append(f"{where}: not a mapping")
            continue
        if "image" not in svc and "build" not in svc:
            problems.append(f"{where}: neither image nor build")
        build = svc.get("build")
        if build is not None:
            ctx = build if isinstance(build, str) else build.get("context", ".")
            ctx_path = os.path.normpath(os.path.join(deploy, ctx))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not os.path.isfile(os.path.join(ctx_path, dockerfile)):
                problems.append(f"{where}.build: no {dockerfile} in {ctx_path}")
        for src in bind_sources(svc):
            host = os.path.normpath(os.path.join(deploy, os.path.expanduser(src)))
            if not os.path.exists(host):
                problems.append(f"{where}.volumes: bind-mounted {src} does not exist (relative to deploy/)")
        for vol in named_volumes(svc):
            if vol not in declared_volumes:
                problems.append(f"{where}.volumes: named volume {vol} is not declared under volumes:")
        for target, cond in depends(svc).items():
            if target not in services:
                problems.append(f"{where}.depends_on: no service {target}")
                continue
            if cond not in DEPENDS_ON_CONDITIONS:
                problems.append(f"{where}.depends_on.{target}: unknown condition {cond}")
            if cond == "service_healthy" and not has_healthcheck(services[target]):
                problems.append(f"{where}.depends_on.{target}: service_healthy, but {target} has no healthcheck")

    # The services the stack is about, and how they must wait for each other.
    for required in ("postgres", "redis", "migrate", "upstream", "prometheus", "grafana"):
        if required not in services:
            problems.append(f"services: no {required}")
    servers = [n for n, s in services.items() if isinstance(s, dict) and is_gateway_server(s)]
    if len(servers) < 2:
        problems.append(f"services: {len(servers)} gateway instance(s) running serve, want 2")
    for name in ("postgres", "redis", *servers):
        if name in services and not has_healthcheck(services[name]):
            problems.append(f"services.{name}: no healthcheck")
    expected = {
        "migrate": {"postgres": "service_healthy"},
        **{s: {"migrate": "service_completed_successfully", "redis": "service_healthy"} for s in servers},
    }
    for name, deps in expected.items():
        if name not in services:
            continue
        have = depends(services[name])
        for target, cond in deps.items():
            if have.get(target) != cond:
                problems.append(
                    f"services.{name}.depends_on.{target}: want condition {cond}, have {have.get(target)}"
                )
    if "migrate" in services and command_of(services["migrate"])[:1] != ["migrate"]:
        problems.append("services.migrate: command must be `migrate`")
    for s in servers:
        env = env_of(services[s])
        if not env.get("REDIS_URL") and not env.get("GATEWAY_REDIS_URL"):
            problems.append(f"services.{s}: no REDIS_URL, so limits would not be shared")

    seen = {}
    for name, svc in services.items():
        for port in host_ports(svc) if isinstance(svc, dict) else []:
            if port in seen:
                problems.append(f"services.{name}: host port {port[0]}/{port[1]} already published by {seen[port]}")
            seen[port] = name

    problems += check_monitoring_targets(deploy, services)
    problems += detect_cycles(services)
    return problems


def check_monitoring_targets(deploy, services):
    """Prometheus scrapes, and Grafana queries, services of this stack."""
    problems = []
    prom = os.path.join(deploy, "prometheus", "prometheus.yml")
    if os.path.isfile(prom):
        cfg = load_yaml(prom) or {}
        for job in cfg.get("scrape_configs") or []:
            for sc in job.get("static_configs") or []:
                for t in sc.get("targets") or []:
                    host = str(t).rsplit(":", 1)[0]
                    if host not in services and host not in ("localhost", "127.0.0.1"):
                        problems.append(f"prometheus.yml: scrape target {t} is no compose service")
    ds = os.path.join(deploy, "grafana", "provisioning", "datasources", "datasource.yml")
    if os.path.isfile(ds):
        for d in (load_yaml(ds) or {}).get("datasources") or []:
            m = re.match(r"https?://([^:/]+)", str(d.get("url", "")))
            if m and m.group(1) not in services:
                problems.append(f"datasource.yml: {d.get('url')} is no compose service")
    return problems


def detect_cycles(services):
    state = {}

    def visit(n, path):
        if state.get(n) == "done":
            return None
        if state.get(n) == "open":
            return path + [n]
        state[n] = "open"
        for t in depends(services.get(n) or {}):
            if t in services:
                c = visit(t, path + [n])
                if c:
                    return c
        state[n] = "done"
        return None

    for n in services:
        c = visit(n, [])
        if c:
            return [f"depends_on cycle: {' -> '.join(c)}"]
    return []


# ---------------------------------------------------------------- kustomize


def k8s_dir(root):
    return os.path.join(root, "deploy", "k8s")


def kustomization(root):
    return load_yaml(os.path.join(k8s_dir(root), "kustomization.yaml")) or {}


def manifest_files(root):
    """Every manifest in deploy/k8s/ (listed or example), for validation."""
    d = k8s_dir(root)
    return sorted(
        os.path.join(d, f)
        for f in os.listdir(d)
        if f.endswith((".yaml", ".yml")) and f not in NOT_MANIFESTS
    )


def dockerfile_uid(root):
    try:
        with open(os.path.join(root, "Dockerfile"), encoding="utf-8") as f:
            users = re.findall(r"^USER\s+(\S+)", f.read(), re.M)
    except OSError:
        return None
    if not users:
        return None
    uid = users[-1].split(":")[0]
    return int(uid) if uid.isdigit() else None


def toml_int(path, section, key, default):
    """One integer key of a TOML section (a regex: tomllib needs 3.11)."""
    current = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            m = re.match(r"^\[([^\]]+)\]$", line)
            if m:
                current = m.group(1).strip()
                continue
            m = re.match(rf"^{re.escape(key)}\s*=\s*(\d+)$", line)
            if m and current == section:
                return int(m.group(1))
    return default


def pod_specs(docs):
    """(where, pod spec) of every workload."""
    for d in docs:
        kind, name = d.get("kind"), (d.get("metadata") or {}).get("name")
        spec = d.get("spec") or {}
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield f"{kind}/{name}", (spec.get("template") or {}).get("spec") or {}
        elif kind == "CronJob":
            tpl = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
            yield f"{kind}/{name}", tpl.get("spec") or {}


def check_kustomize(root):
    d = k8s_dir(root)
    problems = []
    try:
        k = kustomization(root)
    except (OSError, yaml.YAMLError) as e:
        return [f"kustomization.yaml: {e}"]
    listed = list(k.get("resources") or [])
    for r in listed:
        if not os.path.isfile(os.path.join(d, r)):
            problems.append(f"kustomization.yaml: resource {r} does not exist")
    for gen in k.get("configMapGenerator") or []:
        for f in gen.get("files") or []:
            src = f.split("=", 1)[-1]
            if os.path.isabs(src) or ".." in src.split("/"):
                problems.append(f"kustomization.yaml: {src} is outside the base (kustomize refuses it)")
            elif not os.path.isfile(os.path.join(d, src)):
                problems.append(f"kustomization.yaml: configMapGenerator file {src} does not exist")
    for path in manifest_files(root):
        f = os.path.basename(path)
        if f.endswith(".example.yaml"):
            if f in listed:
                problems.append(f"kustomization.yaml: {f} is an example and must not be applied")
        elif f not in listed:
            problems.append(f"kustomization.yaml: {f} is not listed under resources")

    docs = []
    for r in listed:
        p = os.path.join(d, r)
        if os.path.isfile(p):
            docs += load_all(p)
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc.get("kind"), []).append(doc)

    uid = dockerfile_uid(root)
    for where, pod in pod_specs(docs):
        psc = pod.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            problems.append(f"{where}: securityContext.runAsNonRoot is not true")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile is not RuntimeDefault")
        for c in pod.get("containers") or []:
            cw = f"{where} container {c.get('name')}"
            sc = c.get("securityContext") or {}
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{cw}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{cw}: readOnlyRootFilesystem is not true")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{cw}: capabilities do not drop ALL")
            res = c.get("resources") or {}
            if not res.get("requests") or not (res.get("limits") or {}).get("memory"):
                problems.append(f"{cw}: resources need requests and a memory limit")
            if c.get("image") == "gateway" and uid is not None:
                run_as = sc.get("runAsUser", psc.get("runAsUser"))
                if run_as != uid:
                    problems.append(f"{cw}: runAsUser {run_as} is not the Dockerfile's USER {uid}")

    deployments = [x for x in by_kind.get("Deployment", []) if x["metadata"]["name"] == "gateway"]
    if not deployments:
        problems.append("no Deployment gateway")
    for dep in deployments:
        problems += check_gateway_deployment(dep, os.path.join(d, "gateway.toml"))

    for svc in by_kind.get("Service", []):
        ports = [p.get("port") for p in (svc.get("spec") or {}).get("ports") or []]
        if 9090 in ports and (svc["spec"].get("type") or "ClusterIP") != "ClusterIP":
            problems.append(f"Service/{svc['metadata']['name']}: the admin port must stay ClusterIP")
    if not any(9090 in [p.get("port") for p in s["spec"].get("ports", [])] for s in by_kind.get("Service", [])):
        problems.append("no Service for the admin port")
    problems += check_network_policy(by_kind.get("NetworkPolicy", []))

    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    if not any(h.get("apiVersion") == "autoscaling/v2" and "cpu" in str(h["spec"].get("metrics")) for h in hpas):
        problems.append("no autoscaling/v2 HPA on cpu")
    if not any((p.get("spec") or {}).get("minAvailable") == 1 for p in by_kind.get("PodDisruptionBudget", [])):
        problems.append("no PodDisruptionBudget with minAvailable: 1")
    if not any(x["metadata"]["name"] == "gateway-migrate" for x in by_kind.get("Job", [])):
        problems.append("no migrate Job")
    claims = {x["metadata"]["name"] for x in by_kind.get("PersistentVolumeClaim", [])}
    crons = by_kind.get("CronJob", [])
    if not crons:
        problems.append("no backup CronJob")
    for cj in crons:
        if cj["spec"].get("concurrencyPolicy") != "Forbid":
            problems.append(f"CronJob/{cj['metadata']['name']}: concurrencyPolicy is not Forbid")
        pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        for v in pod.get("volumes") or []:
            claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and claim not in claims:
                problems.append(f"CronJob/{cj['metadata']['name']}: PVC {claim} is not in the base")
        if "pg_dump" not in str(pod) or "KEEP" not in str(pod):
            problems.append(f"CronJob/{cj['metadata']['name']}: no pg_dump with retention")
    return problems


def check_gateway_deployment(dep, config_path):
    problems = []
    spec = dep.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    if spec.get("replicas") != 2:
        problems.append("Deployment/gateway: replicas is not 2")
    if not pod.get("topologySpreadConstraints"):
        problems.append("Deployment/gateway: no topologySpreadConstraints")
    containers = [c for c in pod.get("containers") or [] if c.get("image") == "gateway"]
    if not containers:
        return problems + ["Deployment/gateway: no container with image gateway"]
    c = containers[0]
    for probe, path in (("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready")):
        got = ((c.get(probe) or {}).get("httpGet") or {})
        if got.get("path") != path or got.get("port") not in ("admin", 9090):
            problems.append(f"Deployment/gateway: {probe} is not GET {path} on the admin port")
    cmd = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
    sleep = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds")
    if sleep is None and len(cmd) == 2 and cmd[0] == "sleep" and str(cmd[1]).isdigit():
        sleep = int(cmd[1])
    if sleep is None:
        problems.append("Deployment/gateway: no preStop sleep")
        sleep = 0
    grace = toml_int(config_path, "proxy", "shutdown_grace_seconds", 5) if os.path.isfile(config_path) else 5
    # Pingora's graceful_shutdown_timeout_seconds (src/server.rs) adds 1 s.
    need = sleep + grace + 1
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    if tgps <= need:
        problems.append(
            f"Deployment/gateway: terminationGracePeriodSeconds {tgps} must exceed "
            f"preStop {sleep} + shutdown_grace_seconds {grace} + 1"
        )
    mounts = {m["mountPath"] for m in c.get("volumeMounts") or []}
    if "/tmp" not in mounts:
        problems.append("Deployment/gateway: no writable /tmp (emptyDir) under a read-only root")
    return problems


def check_network_policy(policies):
    problems = []
    admin_rules = []
    for np in policies:
        for rule in (np.get("spec") or {}).get("ingress") or []:
            if 9090 in [p.get("port") for p in rule.get("ports") or []]:
                admin_rules.append((np["metadata"]["name"], rule))
            elif not rule.get("ports"):
                problems.append(f"NetworkPolicy/{np['metadata']['name']}: an ingress rule opens every port")
    if not admin_rules:
        problems.append("NetworkPolicy: no rule for the admin port 9090")
    for name, rule in admin_rules:
        froms = rule.get("from") or []
        ok = froms and all(
            set(f) == {"namespaceSelector"}
            and (f["namespaceSelector"].get("matchLabels") or {}) == {"kubernetes.io/metadata.name": "monitoring"}
            for f in froms
        )
        if not ok:
            problems.append(f"NetworkPolicy/{name}: the admin port must admit only the monitoring namespace")
    return problems


# ---------------------------------------------------------------- Dockerfile


def check_dockerfile(root):
    path = os.path.join(root, "Dockerfile")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        return [f"Dockerfile: {e}"]
    problems = []
    if len(re.findall(r"^FROM\s", text, re.M)) < 2:
        problems.append("Dockerfile: not a multi-stage build")
    if re.search(r"^FROM\s+\S+:latest\b", text, re.M) or re.search(r"^FROM\s+[^:\s]+(\s|$)", text, re.M):
        problems.append("Dockerfile: a base image without a pinned tag")
    if dockerfile_uid(root) in (None, 0):
        problems.append("Dockerfile: the last USER is not a numeric non-root UID")
    if not re.search(r"^STOPSIGNAL\s+SIGTERM\s*$", text, re.M):
        problems.append("Dockerfile: STOPSIGNAL is not SIGTERM (Pingora's graceful terminate)")
    if not re.search(r"^HEALTHCHECK\b.*(\\\n.*)*\"gateway\", \"health\"", text, re.M):
        problems.append("Dockerfile: HEALTHCHECK does not run `gateway health`")
    return problems


# ---------------------------------------------------------------- configs


def with_local_targets(text):
    """Upstream targets resolve only inside the stack: point them at 127.0.0.1."""

    def fix_line(m):
        inner = re.sub(r'"([^":\[\]]+):(\d+)"', r'"127.0.0.1:\2"', m.group(2))
        return m.group(1) + inner

    return re.sub(r"^(\s*targets\s*=\s*)(\[.*\])", fix_line, text, flags=re.M)


def config_envs(root):
    """(config file, environment its deployment gives it)."""
    deploy = os.path.join(root, "deploy")
    compose = load_yaml(os.path.join(deploy, "compose.yaml")) or {}
    servers = [s for s in (compose.get("services") or {}).values() if isinstance(s, dict) and is_gateway_server(s)]
    compose_env = env_of(servers[0]) if servers else {}
    secret = {}
    for doc in load_all(os.path.join(deploy, "k8s", "secret.example.yaml")):
        if doc.get("kind") == "Secret":
            secret.update(doc.get("stringData") or {})
    k8s_env = {
        "GATEWAY_KEYS_PEPPER": secret.get("pepper", ""),
        "DATABASE_URL": secret.get("database-url", ""),
        "REDIS_URL": secret.get("redis-url", ""),
    }
    return [
        (os.path.join(deploy, "compose", "gateway.toml"), compose_env),
        (os.path.join(deploy, "k8s", "gateway.toml"), k8s_env),
    ]


def check_configs(root, binary):
    problems = []
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k not in ("DATABASE_URL", "REDIS_URL")}
    with tempfile.TemporaryDirectory() as tmp:
        for path, env in config_envs(root):
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                problems.append(f"{path}: {e}")
                continue
            probe = os.path.join(tmp, os.path.basename(os.path.dirname(path)) + ".toml")
            with open(probe, "w", encoding="utf-8") as f:
                f.write(with_local_targets(text))
            out = subprocess.run(
                [binary, "check-config", "-c", probe],
                env={**base_env, **env},
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                msg = (out.stderr or out.stdout).strip().replace(probe, path)
                problems.append(f"{os.path.relpath(path, root)}: {msg}")
    return problems


# ---------------------------------------------------------------- self-test


def copy_tree(root, tmp):
    dst = os.path.join(tmp, "root")
    shutil.copytree(os.path.join(root, "deploy"), os.path.join(dst, "deploy"))
    shutil.copy(os.path.join(root, "Dockerfile"), os.path.join(dst, "Dockerfile"))
    return dst


def edit_yaml(path, change):
    docs = load_all(path)
    change(docs)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)


def self_test(root, binary=None):
    failures = []
    for name, check in (("compose", check_compose), ("kustomize", check_kustomize), ("dockerfile", check_dockerfile)):
        problems = check(root)
        if problems:
            failures.append(f"the real files fail {name}: {problems}")

    def compose_edit(change):
        return lambda r: edit_yaml(os.path.join(r, "deploy", "compose.yaml"), lambda d: change(d[0]["services"]))

    def k8s_edit(file, change):
        return lambda r: edit_yaml(os.path.join(r, "deploy", "k8s", file), change)

    def set_dep(services, svc, target, cond):
        services[svc]["depends_on"] = copy.deepcopy(services[svc]["depends_on"])
        services[svc]["depends_on"][target] = {"condition": cond}

    def deployment(docs):
        return docs[0]["spec"]["template"]["spec"]

    cases = [
        ("compose", "a mounted file is missing", "alerts.yml",
         lambda r: os.remove(os.path.join(r, "deploy", "prometheus", "alerts.yml"))),
        ("compose", "a gateway waits for migrate to be healthy, not done", "service_completed_successfully",
         compose_edit(lambda s: set_dep(s, "gateway-2", "migrate", "service_healthy"))),
        ("compose", "a dependency on a missing service", "no service",
         compose_edit(lambda s: set_dep(s, "gateway-1", "postgress", "service_healthy"))),
        ("compose", "postgres without a healthcheck", "postgres",
         compose_edit(lambda s: s["postgres"].pop("healthcheck"))),
        ("compose", "two services on one host port", "already published",
         compose_edit(lambda s: s["gateway-2"].__setitem__("ports", ["8081:8080", "127.0.0.1:9092:9090"]))),
        ("compose", "a service with neither image nor build", "neither image nor build",
         compose_edit(lambda s: s["redis"].pop("image"))),
        ("compose", "Prometheus scrapes a service that does not exist", "no compose service",
         compose_edit(lambda s: s.__setitem__("gateway-3", s.pop("gateway-2")))),
        ("kustomize", "a listed resource is missing", "does not exist",
         lambda r: os.remove(os.path.join(r, "deploy", "k8s", "pdb.yaml"))),
        ("kustomize", "a manifest is not listed", "not listed",
         lambda r: shutil.copy(os.path.join(r, "deploy", "k8s", "pdb.yaml"), os.path.join(r, "deploy", "k8s", "extra.yaml"))),
        ("kustomize", "the grace period is shorter than preStop + shutdown grace", "terminationGracePeriodSeconds",
         k8s_edit("deployment.yaml", lambda d: deployment(d).__setitem__("terminationGracePeriodSeconds", 10))),
        ("kustomize", "a runAsUser other than the image's", "runAsUser",
         k8s_edit("deployment.yaml", lambda d: deployment(d)["securityContext"].__setitem__("runAsUser", 1000))),
        ("kustomize", "a writable root filesystem", "readOnlyRootFilesystem",
         k8s_edit("cronjob-backup.yaml", lambda d: d[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
                  ["containers"][0]["securityContext"].__setitem__("readOnlyRootFilesystem", False))),
        ("kustomize", "the admin port open to every namespace", "monitoring",
         k8s_edit("networkpolicy.yaml", lambda d: d[0]["spec"]["ingress"][1].pop("from"))),
        ("kustomize", "the admin Service exposed", "ClusterIP",
         k8s_edit("service-admin.yaml", lambda d: d[0]["spec"].__setitem__("type", "LoadBalancer"))),
        ("dockerfile", "a root USER", "USER",
         lambda r: rewrite(os.path.join(r, "Dockerfile"), r"^USER .*$", "USER root")),
        ("dockerfile", "SIGQUIT as stop signal", "STOPSIGNAL",
         lambda r: rewrite(os.path.join(r, "Dockerfile"), r"^STOPSIGNAL .*$", "STOPSIGNAL SIGQUIT")),
    ]
    checks = {"compose": check_compose, "kustomize": check_kustomize, "dockerfile": check_dockerfile}
    for kind, what, expect, breaker in cases:
        with tempfile.TemporaryDirectory() as tmp:
            r = copy_tree(root, tmp)
            breaker(r)
            problems = checks[kind](r)
            if not any(expect in p for p in problems):
                failures.append(f"{kind} check passed a broken copy ({what}); problems: {problems}")
    if binary:
        config_cases = [
            ("a demo pepper shorter than 32 bytes", "pepper",
             lambda r: rewrite(os.path.join(r, "deploy", "compose.yaml"),
                               r"demo-pepper-[A-Za-z0-9-]*", "too-short")),
            ("an unknown key in the Kubernetes config", "unknown key",
             lambda r: rewrite(os.path.join(r, "deploy", "k8s", "gateway.toml"),
                               r"^\[rate_limits\]$", "[rate_limits]\nbackend_typo = 1")),
        ]
        for what, expect, breaker in config_cases:
            with tempfile.TemporaryDirectory() as tmp:
                r = copy_tree(root, tmp)
                breaker(r)
                problems = check_configs(r, binary)
                if not any(expect in p for p in problems):
                    failures.append(f"configs check passed a broken copy ({what}); problems: {problems}")
        cases += config_cases
    return failures, len(cases)


def rewrite(path, pattern, repl):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(re.sub(pattern, repl, text, count=1, flags=re.M))


# ---------------------------------------------------------------- main


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, root = argv[1], os.path.abspath(argv[2])
    if cmd == "manifests":
        print("\n".join(manifest_files(root)))
        return 0
    if cmd == "self-test":
        failures, n = self_test(root, argv[3] if len(argv) > 3 else None)
        for f in failures:
            print(f)
        if not failures:
            print(f"{n} broken copies, each refused")
        return 1 if failures else 0
    if cmd == "configs":
        problems = check_configs(root, argv[3])
    else:
        checks = {"compose": check_compose, "kustomize": check_kustomize, "dockerfile": check_dockerfile}
        if cmd not in checks:
            print(__doc__, file=sys.stderr)
            return 2
        problems = checks[cmd](root)
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
