//! Expansion of a manifest into the DAG of nodes: stage kinds looked up, inputs bound, sweeps expanded into one node
//! per point, `${var}` references substituted, parameters validated by their stage, data paths resolved. Every
//! mistake is reported before any work starts, at the file, line and column where it was written.

use crate::error::ManifestError;
use crate::manifest::{self, DeclaredStage, Manifest, Resources};
use crate::render::visible;
use rmdistill_stages::{Stage, StageError};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One upstream output bound to an input slot.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub node: usize,
    pub output: &'static str,
}

/// One unit of work: a stage at one point of its sweep.
#[derive(Clone)]
pub struct Node {
    /// `stage` or `stage@axis=value,…` (axes sorted).
    pub name: String,
    pub stage: String,
    pub kind: &'static dyn Stage,
    pub coords: BTreeMap<String, Value>,
    pub params: Map<String, Value>,
    /// Slot → bound upstream outputs, in a deterministic order.
    pub inputs: BTreeMap<String, Vec<Upstream>>,
    /// Path parameter → resolved local file.
    pub externals: BTreeMap<String, PathBuf>,
    pub resources: Resources,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("name", &self.name).field("stage", &self.stage).finish()
    }
}

impl Node {
    /// Indices of the nodes this one reads from.
    pub fn deps(&self) -> impl Iterator<Item = usize> + '_ {
        self.inputs.values().flatten().map(|u| u.node)
    }

    /// Whether its stage computes on libtorch (in a worker process): the only results whose bits depend on the
    /// kind of CPU, and the only nodes that may take a GPU.
    pub fn runs_on_libtorch(&self) -> bool {
        matches!(self.kind.runs(), rmdistill_stages::Runs::Worker)
    }
}

/// The expanded DAG, nodes in topological order.
pub struct Plan {
    pub manifest: Manifest,
    pub nodes: Vec<Node>,
    /// Stage name → indices of its nodes.
    pub by_stage: BTreeMap<String, Vec<usize>>,
}

impl Plan {
    pub fn find(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }
    /// Indices of the nodes that read from each node.
    pub fn dependents(&self) -> Vec<Vec<usize>> {
        let mut d = vec![Vec::new(); self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for u in n.deps() {
                if !d[u].contains(&i) {
                    d[u].push(i);
                }
            }
        }
        d
    }
    /// A node and every node it (transitively) reads from, in topological order.
    pub fn ancestors_and_self(&self, target: usize) -> Vec<usize> {
        let mut keep = vec![false; self.nodes.len()];
        keep[target] = true;
        for i in (0..=target).rev() {
            if keep[i] {
                for d in self.nodes[i].deps() {
                    keep[d] = true;
                }
            }
        }
        (0..self.nodes.len()).filter(|&i| keep[i]).collect()
    }
}

/// Renders a coordinate value for a node name.
pub fn coord_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn node_name(stage: &str, coords: &BTreeMap<String, Value>) -> String {
    if coords.is_empty() {
        return stage.to_string();
    }
    let parts: Vec<String> = coords.iter().map(|(k, v)| format!("{k}={}", coord_str(v))).collect();
    format!("{stage}@{}", parts.join(","))
}

struct Scope<'a> {
    manifest: &'a Manifest,
    coords: &'a BTreeMap<String, Value>,
}

impl Scope<'_> {
    fn lookup(&self, name: &str) -> Option<Value> {
        if let Some(v) = self.coords.get(name) {
            return Some(v.clone());
        }
        self.manifest.vars.get(name).map(|v| manifest::to_json(&v.value))
    }
}

/// Substitutes `${name}` references: a string that is exactly one reference takes the referenced value with its
/// type; references inside longer strings are spliced in as text, and `$${` is a literal `${`.
fn resolve(v: &Value, scope: &Scope, err: &dyn Fn(String) -> ManifestError) -> Result<Value, ManifestError> {
    Ok(match v {
        Value::String(s) => {
            if let Some(name) = manifest::whole_ref(s) {
                scope.lookup(name).ok_or_else(|| err(unknown_ref(name, scope)))?
            } else if s.contains("${") {
                let mut out = String::new();
                for piece in manifest::pieces(s).map_err(err)? {
                    match piece {
                        Ok(text) => out.push_str(text),
                        Err(name) => {
                            let val = scope.lookup(name).ok_or_else(|| err(unknown_ref(name, scope)))?;
                            out.push_str(&coord_str(&val));
                        }
                    }
                }
                Value::String(out)
            } else {
                v.clone()
            }
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| resolve(x, scope, err)).collect::<Result<_, _>>()?),
        Value::Object(o) => Value::Object(
            o.iter().map(|(k, x)| Ok((k.clone(), resolve(x, scope, err)?))).collect::<Result<_, ManifestError>>()?,
        ),
        other => other.clone(),
    })
}

/// The names of the `${name}` references in a value, in order, each once.
fn var_refs(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |n: &str| {
        if !out.iter().any(|o| o == n) {
            out.push(n.to_string());
        }
    };
    match v {
        Value::String(s) => {
            if let Some(n) = manifest::whole_ref(s) {
                add(n);
            } else if let Ok(pieces) = manifest::pieces(s) {
                for n in pieces.into_iter().filter_map(Result::err) {
                    add(n);
                }
            }
        }
        Value::Array(a) => a.iter().flat_map(var_refs).for_each(|n| add(&n)),
        Value::Object(o) => o.values().flat_map(var_refs).for_each(|n| add(&n)),
        _ => {}
    }
    out
}

fn unknown_ref(name: &str, scope: &Scope) -> String {
    let mut known: Vec<String> = scope.coords.keys().cloned().collect();
    known.extend(scope.manifest.vars.keys().cloned());
    format!(
        "`${{{name}}}` names no variable or sweep axis (known: {})",
        if known.is_empty() { "none".into() } else { known.join(", ") }
    )
}

/// Most nodes a plan may have, all stages' sweeps together: far above any real study (each node is a process and a
/// cache entry), and low enough that a mistyped sweep is an error instead of memory growing without bound.
pub const MAX_NODES: u64 = 1_000_000;

/// Expands a loaded manifest into its plan.
pub fn expand(manifest: Manifest) -> Result<Plan, ManifestError> {
    let m = &manifest;
    let err = |s: &DeclaredStage, span: Range<usize>, msg: String| m.sources[s.source].error(span, msg);

    // Kinds, slots and stage-level edges.
    let mut kinds: HashMap<&str, &'static dyn Stage> = HashMap::new();
    let mut edges: HashMap<&str, Vec<(String, &str, &'static str)>> = HashMap::new(); // stage → (slot, upstream, output)
    for s in &m.stages {
        let kind = rmdistill_stages::stage(s.decl.kind.get_ref()).ok_or_else(|| {
            let known: Vec<_> = rmdistill_stages::registry().iter().map(|k| k.kind()).collect();
            err(
                s,
                s.decl.kind.span(),
                format!("unknown stage kind `{}` (known: {})", s.decl.kind.get_ref(), known.join(", ")),
            )
        })?;
        kinds.insert(&s.name, kind);
    }
    for s in &m.stages {
        let kind = kinds[s.name.as_str()];
        let mut es = Vec::new();
        for (slot, r) in &s.decl.inputs {
            let spec = kind.inputs().iter().find(|i| i.name == slot.get_ref()).ok_or_else(|| {
                let known: Vec<_> = kind.inputs().iter().map(|i| i.name).collect();
                err(
                    s,
                    slot.span(),
                    format!(
                        "stage kind `{}` has no input `{}` (its inputs: {})",
                        kind.kind(),
                        slot.get_ref(),
                        if known.is_empty() { "none".into() } else { known.join(", ") }
                    ),
                )
            })?;
            let refs: Vec<&str> = match r.get_ref() {
                toml::Value::String(one) => vec![one.as_str()],
                toml::Value::Array(list) if !list.is_empty() && list.iter().all(|v| v.is_str()) => {
                    list.iter().filter_map(|v| v.as_str()).collect()
                }
                other => {
                    return Err(err(
                        s,
                        r.span(),
                        format!(
                            "input `{}`: expected \"STAGE.OUTPUT\" or a non-empty list of them, got {other}",
                            slot.get_ref()
                        ),
                    ));
                }
            };
            if refs.len() > 1 && !spec.many {
                return Err(err(
                    s,
                    r.span(),
                    format!(
                        "input `{}` of stage kind `{}` takes one artifact, not a list",
                        slot.get_ref(),
                        kind.kind()
                    ),
                ));
            }
            for one in refs {
                let (up, out) = one.rsplit_once('.').ok_or_else(|| {
                    err(s, r.span(), format!("input `{}` = \"{one}\": expected \"STAGE.OUTPUT\"", slot.get_ref()))
                })?;
                let up_kind = *kinds.get(up).ok_or_else(|| {
                    err(
                        s,
                        r.span(),
                        format!(
                            "input `{}` names stage `{up}`, which is not declared (stages: {})",
                            slot.get_ref(),
                            m.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    )
                })?;
                let out_spec = up_kind.outputs().iter().find(|o| o.name == out).ok_or_else(|| {
                    let known: Vec<_> = up_kind.outputs().iter().map(|o| o.name).collect();
                    err(
                        s,
                        r.span(),
                        format!(
                            "stage `{up}` (kind `{}`) has no output `{out}` (its outputs: {})",
                            up_kind.kind(),
                            known.join(", ")
                        ),
                    )
                })?;
                let up: &str = kinds.get_key_value(up).map(|(name, _)| *name).expect("declared");
                es.push((slot.get_ref().clone(), up, out_spec.name));
            }
        }
        for spec in kind.inputs() {
            if spec.required && !s.decl.inputs.keys().any(|k| k.get_ref() == spec.name) {
                return Err(err(
                    s,
                    s.span.clone(),
                    format!("stage `{}` (kind `{}`) needs input `{}` ({})", s.name, kind.kind(), spec.name, spec.doc),
                ));
            }
        }
        edges.insert(&s.name, es);
    }

    // Topological order of stages, depth-first without recursion (a chain of stages may be long); a cycle is
    // reported with its path.
    let index: HashMap<&str, usize> = m.stages.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let ups: Vec<Vec<usize>> =
        m.stages.iter().map(|s| edges[s.name.as_str()].iter().map(|(_, up, _)| index[up]).collect()).collect();
    let mut order: Vec<usize> = Vec::new();
    let mut state = vec![0u8; m.stages.len()]; // 0 new, 1 on the path, 2 done
    for root in 0..m.stages.len() {
        if state[root] == 2 {
            continue;
        }
        // the path from `root`, each stage with the next of its upstream stages to visit
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        state[root] = 1;
        while let Some(&mut (i, ref mut next)) = path.last_mut() {
            let Some(&j) = ups[i].get(*next) else {
                state[i] = 2;
                order.push(i);
                path.pop();
                continue;
            };
            *next += 1;
            match state[j] {
                2 => {}
                1 => {
                    let start = path.iter().position(|&(k, _)| k == j).unwrap_or(0);
                    let mut names: Vec<&str> = path[start..].iter().map(|&(k, _)| m.stages[k].name.as_str()).collect();
                    names.push(&m.stages[j].name);
                    let s = &m.stages[j];
                    return Err(m.sources[s.source]
                        .error(s.name_span.clone(), format!("cycle between stages: {}", names.join(" -> "))));
                }
                _ => {
                    state[j] = 1;
                    path.push((j, 0));
                }
            }
        }
    }

    // Nodes.
    let mut nodes: Vec<Node> = Vec::new();
    let mut by_stage: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let base = m.base_dir();
    let mut total_nodes: u64 = 0;
    for &si in &order {
        let s = &m.stages[si];
        let kind = kinds[s.name.as_str()];
        let empty = BTreeMap::new();
        let scope0 = Scope { manifest: m, coords: &empty };
        // Sweep axes → value lists.
        let mut axes: Vec<(String, Vec<Value>)> = Vec::new();
        for (axis, vals) in &s.decl.sweep {
            if !valid_name(axis.get_ref()) {
                return Err(err(
                    s,
                    axis.span(),
                    format!("sweep axis `{}` may use only letters, digits and `_`", axis.get_ref()),
                ));
            }
            let e = |msg: String| err(s, vals.span(), msg);
            let named = |msg: String| e(format!("{}: sweep `{}`: {msg}", s.name, axis.get_ref()));
            let v = resolve(&manifest::to_json(vals.get_ref()), &scope0, &named)?;
            let Value::Array(list) = v else {
                return Err(e(format!("sweep `{}` must be a list of values, got {v}", axis.get_ref())));
            };
            if list.is_empty() {
                return Err(e(format!("sweep `{}` is empty: a sweep needs at least one value", axis.get_ref())));
            }
            if list.len() as u64 > MAX_NODES {
                return Err(e(format!(
                    "sweep `{}` lists {} values; a plan may have at most {MAX_NODES} nodes",
                    axis.get_ref(),
                    list.len()
                )));
            }
            // Rendered value → the value, to find two that name one node without comparing every pair.
            let mut seen: HashMap<String, &Value> = HashMap::new();
            for x in &list {
                if matches!(x, Value::Array(_) | Value::Object(_)) {
                    return Err(e(format!(
                        "sweep `{}` values must be strings, numbers or booleans, got {x}",
                        axis.get_ref()
                    )));
                }
                // Values become node names: two that render alike ("1" and 1) would name two nodes the same.
                if let Some(&prev) = seen.get(&coord_str(x)) {
                    return Err(e(if prev == x {
                        format!("sweep `{}` lists {x} twice", axis.get_ref())
                    } else {
                        format!(
                            "sweep `{}` lists {prev} and {x}, which name the same node `{}`; write both with one type",
                            axis.get_ref(),
                            coord_str(x)
                        )
                    }));
                }
                if coord_str(x).chars().any(char::is_control) {
                    return Err(e(format!(
                        "sweep `{}` value {x} has a control character; sweep values become node names, which are one line",
                        axis.get_ref()
                    )));
                }
                seen.insert(coord_str(x), x);
            }
            drop(seen);
            axes.push((axis.get_ref().clone(), list));
        }
        // Counted before the points are made: a few long axes multiply into more nodes than memory holds.
        let count = axes.iter().try_fold(1u64, |n, (_, vals)| n.checked_mul(vals.len() as u64));
        let before = total_nodes;
        total_nodes = count.map_or(u64::MAX, |c| total_nodes.saturating_add(c));
        if total_nodes > MAX_NODES {
            let span = s.decl.sweep.keys().next().map_or(s.span.clone(), |a| a.span());
            let lengths: Vec<String> = axes.iter().map(|(a, v)| format!("{} `{a}`", v.len())).collect();
            let shape = if lengths.is_empty() { String::new() } else { format!(" ({})", lengths.join(" × ")) };
            let alone = count.is_none_or(|c| c > MAX_NODES);
            let count = count.map_or_else(|| format!("more than {}", u64::MAX), |c| c.to_string());
            return Err(err(
                s,
                span,
                if alone {
                    format!(
                        "stage `{}`: its sweep expands to {count} nodes{shape}; a plan may have at most {MAX_NODES} nodes",
                        s.name
                    )
                } else {
                    format!(
                        "stage `{}`: {count} nodes{shape}, which with the {before} nodes of the stages before it is more than the limit of {MAX_NODES} nodes in a plan",
                        s.name
                    )
                },
            ));
        }
        let mut points: Vec<BTreeMap<String, Value>> = vec![BTreeMap::new()];
        for (axis, vals) in &axes {
            points = points
                .into_iter()
                .flat_map(|p| {
                    vals.iter().map(move |v| {
                        let mut q = p.clone();
                        q.insert(axis.clone(), v.clone());
                        q
                    })
                })
                .collect();
        }
        for coords in points {
            let name = node_name(&s.name, &coords);
            let scope = Scope { manifest: m, coords: &coords };
            let mut params = Map::new();
            for (k, v) in &s.decl.params {
                let e = |msg: String| err(s, v.span(), format!("{name}: param `{}`: {msg}", k.get_ref()));
                params.insert(k.get_ref().clone(), resolve(&manifest::to_json(v.get_ref()), &scope, &e)?);
            }
            let param_span = |field: &str| {
                let top = field.split(['.', '[']).next().unwrap_or("");
                s.decl.params.iter().find(|(k, _)| k.get_ref() == top).map(|(_, v)| v.span()).unwrap_or(s.span.clone())
            };
            // where a param's value came from when it names variables: the error points at the param, often in the
            // pipeline, while the value a user must fix is a variable's in the manifest, or a --set
            let origin = |field: &str| -> String {
                let top = field.split(['.', '[']).next().unwrap_or("");
                let Some((_, raw)) = s.decl.params.iter().find(|(k, _)| k.get_ref() == top) else {
                    return String::new();
                };
                let said: Vec<String> = var_refs(&manifest::to_json(raw.get_ref()))
                    .into_iter()
                    .filter(|n| !coords.contains_key(n))
                    .filter_map(|n| m.vars.get(&n).map(|v| (n, v)))
                    .map(|(n, v)| match &v.set {
                        Some(set) => format!("`${{{n}}}` is `--set {}`", visible(set, &[])),
                        None => {
                            let src = &m.sources[v.source];
                            let (line, col) = crate::error::line_col(&src.text, v.span.start);
                            format!("`${{{n}}}` is set at {}:{line}:{col}", src.path.display())
                        }
                    })
                    .collect();
                if said.is_empty() { String::new() } else { format!(" ({})", said.join("; ")) }
            };
            let bound = |slot: &str| s.decl.inputs.keys().any(|k| k.get_ref() == slot);
            if let Err(e) = kind.validate(&params).and_then(|_| kind.validate_bound(&params, &bound)) {
                return Err(match e {
                    StageError::Invalid { field, message } => err(
                        s,
                        param_span(&field),
                        if field.is_empty() {
                            format!("{name}: {message}")
                        } else {
                            format!("{name}: param `{field}`: {message}{}", origin(&field))
                        },
                    ),
                    StageError::Failed(message) => err(s, s.span.clone(), format!("{name}: {message}")),
                });
            }
            let mut externals = BTreeMap::new();
            for &p in kind.path_params() {
                if let Some(v) = params.get(p) {
                    let Value::String(rel) = v else {
                        return Err(err(
                            s,
                            param_span(p),
                            format!("{name}: param `{p}` must be a file path (a string), got {v}"),
                        ));
                    };
                    let path = base.join(rel);
                    if let Some(what) = not_a_file_or_dir(&path) {
                        return Err(err(
                            s,
                            param_span(p),
                            format!(
                                "{name}: param `{p}`: {what}: {} (paths are relative to the manifest's directory){}",
                                visible(&path.display().to_string(), &[]),
                                origin(p)
                            ),
                        ));
                    }
                    externals.insert(p.to_string(), path);
                }
            }
            let mut inputs: BTreeMap<String, Vec<Upstream>> = BTreeMap::new();
            for (slot, up, out) in &edges[s.name.as_str()] {
                let spec = kind.inputs().iter().find(|i| i.name == slot).expect("checked");
                let matches: Vec<usize> = by_stage[*up]
                    .iter()
                    .copied()
                    .filter(|&j| nodes[j].coords.iter().all(|(a, v)| coords.get(a).is_none_or(|w| w == v)))
                    .collect();
                let span = s
                    .decl
                    .inputs
                    .iter()
                    .find(|(k, _)| k.get_ref() == slot)
                    .map(|(_, v)| v.span())
                    .unwrap_or(s.span.clone());
                if matches.is_empty() {
                    return Err(err(
                        s,
                        span,
                        format!(
                            "{name}: input `{slot}` matches no node of stage `{up}` (no node agrees on the shared sweep axes{})",
                            missing_values(&coords, by_stage[*up].iter().map(|&j| &nodes[j].coords), up)
                        ),
                    ));
                }
                if !spec.many && matches.len() > 1 {
                    let extra: Vec<&String> =
                        nodes[matches[0]].coords.keys().filter(|a| !coords.contains_key(*a)).collect();
                    return Err(err(
                        s,
                        span,
                        format!(
                            "{name}: input `{slot}` takes one artifact but matches {} nodes of stage `{up}`; sweep `{}` over {} too, so that each node reads one",
                            matches.len(),
                            s.name,
                            extra.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                inputs
                    .entry(slot.clone())
                    .or_default()
                    .extend(matches.into_iter().map(|node| Upstream { node, output: out }));
            }
            // Unique by construction: a value containing `,` or `=` could still spell another point's name.
            if let Some(other) = by_stage.get(&s.name).and_then(|ix| ix.iter().find(|&&j| nodes[j].name == name)) {
                return Err(err(
                    s,
                    s.decl.sweep.values().next().map_or(s.span.clone(), |v| v.span()),
                    format!(
                        "two points of the sweep are both named `{name}` ({} and {}); avoid `,` and `=` in sweep values",
                        Value::Object(nodes[*other].coords.clone().into_iter().collect()),
                        Value::Object(coords.clone().into_iter().collect())
                    ),
                ));
            }
            by_stage.entry(s.name.clone()).or_default().push(nodes.len());
            nodes.push(Node {
                name,
                stage: s.name.clone(),
                kind,
                coords,
                params,
                inputs,
                externals,
                resources: s.decl.resources.clone(),
            });
        }
    }
    Ok(Plan { manifest, nodes, by_stage })
}

/// Why a path param's `path` cannot be hashed for the cache key, or `None` when it is a file or a directory
/// (following symbolic links).
fn not_a_file_or_dir(path: &Path) -> Option<String> {
    let e = match std::fs::metadata(path) {
        Ok(m) if m.is_file() || m.is_dir() => return None,
        Ok(_) => {
            return Some(
                "not a regular file or directory (a device, socket or pipe cannot be hashed for the cache key)".into(),
            );
        }
        Err(e) => e,
    };
    Some(if e.raw_os_error() == Some(libc::ELOOP) {
        "a symbolic link that loops (too many levels of symbolic links)".into()
    } else if e.kind() == std::io::ErrorKind::NotFound {
        match std::fs::read_link(path) {
            Ok(target) => {
                format!("a symbolic link to {}, which does not exist", visible(&target.display().to_string(), &[]))
            }
            Err(_) => "no such file or directory".into(),
        }
    } else {
        format!("cannot be read ({e})")
    })
}

/// For an input that matches no upstream node: each shared sweep axis on which this node's value is not among the
/// upstream stage's, as "; `seed` = 5 here, `d_rho` has 0, 1, 2" (empty when every value appears upstream, i.e. only
/// their combination is missing).
fn missing_values<'a>(
    coords: &BTreeMap<String, Value>,
    upstream: impl Iterator<Item = &'a BTreeMap<String, Value>>,
    up: &str,
) -> String {
    let mut seen: BTreeMap<&str, Vec<&'a Value>> = BTreeMap::new();
    for c in upstream {
        for (a, v) in c {
            if coords.contains_key(a) {
                let vs = seen.entry(a.as_str()).or_default();
                if !vs.contains(&v) {
                    vs.push(v);
                }
            }
        }
    }
    let mut out = String::new();
    for (a, vs) in seen {
        if !vs.contains(&&coords[a]) {
            let have: Vec<String> = vs.iter().map(|v| coord_str(v)).collect();
            out += &format!("; `{a}` = {} here, `{up}` has {}", coord_str(&coords[a]), have.join(", "));
        }
    }
    out
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Loads, merges and expands a manifest.
pub fn load(path: &std::path::Path, sets: &[String]) -> anyhow::Result<Plan> {
    let m = manifest::load(path, sets)?;
    Ok(expand(m)?)
}
