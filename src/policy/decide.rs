//! `decide()`: policies, permissions and capabilities combined into one Decision.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Duration, DurationRound, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use super::condition::{Compiled, lookup, write_json};
use super::context::{self, Request};
use super::decision::*;
use super::rules::{Policy, Rules, Shared, human};
use crate::capability::{self, Effect};
use crate::crd::deployment_policy::{FailurePolicy, MatchMode, Notify, PolicyAction};
use crate::identity::{Check, Identity, Permission, Role, Subject};

/// How long an approval request stays open when nothing else says so.
const DEFAULT_EXPIRY: &str = "24h";
/// How far ahead `nextWindowOpensAt` is searched.
const HORIZON_DAYS: i64 = 400;

/// When a time-caused violation could clear at the earliest.
#[derive(Clone, Copy, Debug)]
enum Clearance {
    /// Not before this instant.
    At(DateTime<Utc>),
    /// A time condition: re-check at the next quarter hour (every zone offset is a multiple of it).
    NextQuarterHour,
}

/// Decides what happens to `request` at `now`. Pure and deterministic: the same inputs always
/// give the same Decision.
pub fn decide(rules: &Rules, request: &Request, now: DateTime<Utc>) -> Decision {
    decide_with(rules, request, now, Trace::Full)
}

/// `decide(..).for_status()`: the decision as an AgentDeployment's status keeps it, without
/// writing the trace entries and reasons it leaves out (most of the work when many policies
/// are in scope).
pub fn decide_for_status(rules: &Rules, request: &Request, now: DateTime<Utc>) -> Decision {
    decide_with(rules, request, now, Trace::Status)
}

fn decide_with(rules: &Rules, request: &Request, now: DateTime<Utc>, mode: Trace) -> Decision {
    let subject = subject_of(rules, request);
    let base = context::build(request, &subject, now, Tz::UTC);
    let mut contexts = Contexts::new(rules, request, &subject, &base);
    let (mut decision, clearances) = evaluate(rules, &mut contexts, now, mode);
    super::break_glass::mark(rules, &mut decision);
    let only_time =
        decision.outcome == Outcome::Deny && clearances.len() == decision.violations.len();
    if only_time {
        // The search needs every policy in scope: a bounded trace is written out once more.
        let whole =
            (mode != Trace::Full).then(|| evaluate(rules, &mut contexts, now, Trace::Full).0);
        let trace = whole.as_ref().map_or(&decision.trace, |d| &d.trace).clone();
        decision.next_window_opens_at = next_opening(rules, &mut contexts, now, &trace, clearances);
    }
    decision
}

/// The first moment after `now` at which no time-caused violation remains.
///
/// Only what can change with time is evaluated again, among the policies in scope: those whose
/// conditions read a time field, and those whose outcome at `now` mattered (matched, failed, or
/// not reached); a policy
/// that did not match at `now` and reads no time field does not match later either. When only
/// hour, weekday and weekend conditions are left (no `timestamp`, no window, no blackout), they
/// are looked at again only when a local hour turns, for a week and a day at most: they repeat
/// every week, so what stays refused for a whole week stays refused ("never"). Otherwise every
/// quarter hour counts, up to [`HORIZON_DAYS`].
fn next_opening(
    rules: &Rules,
    contexts: &mut Contexts,
    now: DateTime<Utc>,
    trace: &[PolicyTrace],
    mut clearances: Vec<Clearance>,
) -> Option<DateTime<Utc>> {
    // The policies in scope (time does not change a scope), and whether each is settled.
    let in_scope: std::collections::HashMap<&str, bool> = trace
        .iter()
        .map(|t| {
            let settled = matches!(t.result, TraceResult::NotMatched | TraceResult::Disabled);
            (t.policy.as_str(), settled)
        })
        .collect();
    let timed = |p: &Policy| p.parsed.as_ref().is_ok_and(|x| x.time_dependent);
    let rules = rules.only(|p| {
        in_scope
            .get(p.name.as_str())
            .is_some_and(|settled| !settled || timed(p))
    });
    let parsed: Vec<_> = rules
        .policies
        .iter()
        .filter_map(|p| p.parsed.as_ref().ok())
        .collect();
    // Windows and blackouts are dated (and zones change clocks on different dates): with any,
    // every quarter hour is looked at, as far as the horizon.
    let dated = parsed
        .iter()
        .any(|x| !x.windows.is_empty() || !x.blackouts.is_empty());
    let clocks: Vec<(Tz, bool)> = parsed
        .iter()
        .filter(|x| x.time_dependent)
        .map(|x| (x.tz, x.reads_timestamp || dated))
        .collect();
    let periodic = !dated && clocks.iter().all(|(_, every_quarter)| !every_quarter);
    let days = if periodic { 8 } else { HORIZON_DAYS };
    let horizon = now
        .checked_add_signed(Duration::days(days))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let mut t = now;
    while t <= horizon {
        let turn = next_turn(&clocks, t);
        let next = clearances
            .iter()
            .map(|c| match c {
                Clearance::At(at) => *at,
                Clearance::NextQuarterHour => turn,
            })
            .max()?;
        t = if next > t { next } else { turn };
        let (d, c) = evaluate(&rules, contexts, t, Trace::UntilDecided);
        if d.violations.is_empty() {
            return Some(t);
        }
        if c.len() != d.violations.len() {
            return None; // something other than time refuses it then
        }
        clearances = c;
    }
    None
}

/// The next quarter hour after `t` at which a time condition can read something new: the
/// local hour turns in one of the `clocks` (zone, every quarter hour counts), or any quarter
/// hour when one says so. Every zone's hours turn on a quarter hour of UTC.
fn next_turn(clocks: &[(Tz, bool)], t: DateTime<Utc>) -> DateTime<Utc> {
    let hour = |at: DateTime<Utc>, tz: Tz| {
        super::time::local(at, tz).map(|l| (l.date(), chrono::Timelike::hour(&l)))
    };
    let mut q = next_quarter_hour(t);
    if clocks.iter().any(|(_, ts)| *ts) {
        return q;
    }
    for _ in 0..4 {
        if clocks.iter().any(|(tz, _)| hour(q, *tz) != hour(t, *tz)) {
            return q;
        }
        q = next_quarter_hour(q);
    }
    q
}

fn next_quarter_hour(t: DateTime<Utc>) -> DateTime<Utc> {
    let q = Duration::minutes(15);
    let start = t.duration_trunc(q).unwrap_or(t);
    start
        .checked_add_signed(q)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The requester as the role mapping sees them (an unknown one holds no role).
fn subject_of(rules: &Rules, request: &Request) -> Subject {
    let identity = request.requester.clone().unwrap_or_else(unknown_requester);
    rules.mapping.subject(&identity, &request.spec.environment)
}

fn unknown_requester() -> Identity {
    Identity {
        username: "(unknown requester)".into(),
        uid: None,
        groups: vec![],
    }
}

/// Accumulates the parts of a decision while policies are evaluated.
struct Builder {
    d: Decision,
    clearances: Vec<Clearance>,
    manual: bool,
    requirements: BTreeSet<crate::crd::deployment_policy::Requirement>,
    on_deploy: BTreeSet<String>,
    on_failure: BTreeSet<String>,
    on_refusal: BTreeSet<String>,
    /// Hashes of the warnings and of the sources of approval requirements so far (each is
    /// added once; a hash seen before is checked against the list).
    said: HashSet<u64>,
    asked_by: HashSet<u64>,
    /// Whether no two policies share a name (so that each asks for approval once).
    unique_names: bool,
}

impl Builder {
    fn violation(
        &mut self,
        source: String,
        kind: ViolationKind,
        message: String,
        clearance: Option<Clearance>,
    ) {
        self.d.violations.push(Violation {
            source,
            kind,
            message,
            break_glass_lifts: false,
        });
        self.clearances.extend(clearance);
    }

    /// Adds a warning once (the same permission can be gated by the environment and by a
    /// capability; two policies can say the same thing).
    fn warn(&mut self, message: String) {
        if self.said.insert(hash(&message)) || !self.d.warnings.contains(&message) {
            self.d.warnings.push(message);
        }
    }

    /// Adds the approval a policy asks for: policies are visited once each, so it is new
    /// unless two policies share a name (which objects in a cluster cannot).
    fn policy_requires_approval(&mut self, req: ApprovalRequirement) {
        if self.unique_names {
            self.d.approval_requirements.push(req);
        } else {
            self.require_approval(req);
        }
    }

    /// Adds an approval requirement once per source.
    fn require_approval(&mut self, req: ApprovalRequirement) {
        let asked = |r: &ApprovalRequirement| r.source == req.source;
        if self.asked_by.insert(hash(&req.source))
            || !self.d.approval_requirements.iter().any(asked)
        {
            self.d.approval_requirements.push(req);
        }
    }
}

fn hash(text: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(text)
}

/// How much of the trace an evaluation keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trace {
    /// Every policy in scope, reached or not (what a Decision shows).
    Full,
    /// As an AgentDeployment's status keeps it (see [`Decision::for_status`]).
    Status,
    /// None, and only the policies evaluated until the outcome was settled (the search for an
    /// opening needs the violations alone).
    UntilDecided,
}

/// The facts of one request as policy conditions read them. Fields that are not time fields
/// read the same at every instant and in every zone: they are looked up once, in one context.
/// Time fields are read from a context per zone, built once and only re-timed when evaluated
/// again at another instant.
struct Contexts<'a> {
    request: &'a Request,
    subject: &'a Subject,
    /// The context at some instant.
    base: &'a Value,
    /// The values of the shared fields (see `Parsed::shared`), once looked up in `base`.
    fields: Vec<Option<&'a Value>>,
    /// What each shared condition came to, once evaluated.
    shared: Vec<Option<bool>>,
    /// One context per zone, for time fields.
    by_zone: HashMap<Tz, (DateTime<Utc>, Value)>,
}

impl<'a> Contexts<'a> {
    fn new(
        rules: &Rules,
        request: &'a Request,
        subject: &'a Subject,
        base: &'a Value,
    ) -> Contexts<'a> {
        Contexts {
            request,
            subject,
            base,
            fields: vec![None; rules.shared_fields],
            shared: vec![None; rules.shared_conditions],
            by_zone: HashMap::new(),
        }
    }

    /// Whether condition `c` (shared as `shared`) holds at `now` in zone `tz`.
    fn holds(
        &mut self,
        c: &Compiled,
        shared: Option<Shared>,
        now: DateTime<Utc>,
        tz: Tz,
    ) -> Result<bool, String> {
        if let Some(Some(held)) = shared.and_then(|s| self.shared.get(s.condition)) {
            return Ok(*held);
        }
        let held = c.holds(self.value(&c.field, shared, now, tz));
        // Errors are not kept: they are rare, and their message is written again.
        if let (Some(s), Ok(h)) = (shared, &held)
            && let Some(slot) = self.shared.get_mut(s.condition)
        {
            *slot = Some(*h);
        }
        held
    }

    /// The value of `field` (shared as `shared`) at `now` in zone `tz`.
    fn value(&mut self, field: &str, shared: Option<Shared>, now: DateTime<Utc>, tz: Tz) -> &Value {
        let base = self.base;
        match shared.and_then(|s| self.fields.get_mut(s.field)) {
            Some(slot) => slot.get_or_insert_with(|| lookup(base, field)),
            None => lookup(self.at(now, tz), field),
        }
    }

    /// The context at `now` with time fields in zone `tz`.
    fn at(&mut self, now: DateTime<Utc>, tz: Tz) -> &Value {
        let (request, subject) = (self.request, self.subject);
        let (built, ctx) = self
            .by_zone
            .entry(tz)
            .or_insert_with(|| (now, context::build(request, subject, now, tz)));
        if *built != now {
            context::retime(ctx, now, tz);
            *built = now;
        }
        ctx
    }
}

fn evaluate(
    rules: &Rules,
    contexts: &mut Contexts,
    now: DateTime<Utc>,
    trace: Trace,
) -> (Decision, Vec<Clearance>) {
    let request = contexts.request;
    let mut b = Builder {
        d: Decision {
            outcome: Outcome::Allow,
            evaluated_at: now,
            matched_policies: vec![],
            violations: vec![],
            warnings: vec![],
            approval_requirements: vec![],
            requirements: vec![],
            notify: Notify::default(),
            skipped_steps: vec![],
            degraded_steps: vec![],
            manual_instructions: vec![],
            next_window_opens_at: None,
            trace: vec![],
            trace_omitted: 0,
            matched_omitted: 0,
        },
        clearances: vec![],
        manual: false,
        requirements: BTreeSet::new(),
        on_deploy: BTreeSet::new(),
        on_failure: BTreeSet::new(),
        on_refusal: BTreeSet::new(),
        said: HashSet::new(),
        asked_by: HashSet::new(),
        unique_names: rules.unique_names(),
    };

    evaluate_policies(rules, contexts, now, trace, &mut b);
    check_permission(rules, request, contexts.subject, &mut b);
    apply_capabilities(rules, request, contexts.subject, &mut b);
    if request.requester.is_none() && !b.d.approval_requirements.is_empty() {
        let msg = "the requester is unknown (no verified identity): approval cannot be asked for on behalf of nobody, as nobody could then be kept from approving their own change";
        b.violation(
            "requester".into(),
            ViolationKind::UnverifiedRequester,
            msg.into(),
            None,
        );
    }

    let Builder {
        mut d,
        clearances,
        manual,
        requirements,
        on_deploy,
        on_failure,
        on_refusal,
        ..
    } = b;
    d.requirements = requirements.into_iter().collect();
    d.notify = Notify {
        on_deploy: on_deploy.into_iter().collect(),
        on_failure: on_failure.into_iter().collect(),
        on_refusal: on_refusal.into_iter().collect(),
    };
    d.outcome = if !d.violations.is_empty() {
        Outcome::Deny
    } else if manual {
        Outcome::ManualActionRequired
    } else if !d.approval_requirements.is_empty() {
        Outcome::RequireApproval
    } else {
        Outcome::Allow
    };
    (d, clearances)
}

fn evaluate_policies(
    rules: &Rules,
    contexts: &mut Contexts,
    now: DateTime<Utc>,
    mode: Trace,
    b: &mut Builder,
) {
    let request = contexts.request;
    let in_scope = rules.in_scope(&request.namespace, &request.spec);
    // At most as many as are scoped to the environment or to all (a search for an opening
    // stops at the first decisive policy: it reserves nothing).
    let room = match mode {
        Trace::UntilDecided => 0,
        Trace::Full | Trace::Status => in_scope.size_hint().1.unwrap_or(0),
    };
    let mut visits: Vec<Visit> = Vec::with_capacity(room);
    let mut outcomes = Outcomes::default();
    let mut ended = false;
    for policy in in_scope {
        let mut visit = Visit {
            policy,
            result: TraceResult::NotReached,
            from: outcomes.len(),
            note: None,
        };
        if ended {
            if mode == Trace::UntilDecided {
                break;
            }
            visits.push(visit);
            continue;
        }
        let spec = &policy.spec;
        if !spec.enabled {
            visit.result = TraceResult::Disabled;
            visits.push(visit);
            continue;
        }
        let outcome = match &policy.parsed {
            Err(e) => Err(format!("policy {} is invalid: {e}", policy.name)),
            Ok(parsed) => {
                let (mut error, mut all, mut any) = (None, true, false);
                for (c, shared) in parsed.conditions.iter().zip(&parsed.shared) {
                    let r = contexts.holds(c, *shared, now, parsed.tz);
                    match &r {
                        Ok(h) => (all, any) = (all && *h, any || *h),
                        Err(e) => error = error.or_else(|| Some(e.clone())),
                    }
                    outcomes.push(r);
                }
                match error {
                    Some(e) => Err(format!(
                        "policy {} could not be evaluated: {e}",
                        policy.name
                    )),
                    None => Ok(parsed.conditions.is_empty()
                        || match spec.match_ {
                            MatchMode::All => all,
                            MatchMode::Any => any,
                        }),
                }
            }
        };
        match outcome {
            Err(e) => {
                visit.note = Some(e.clone());
                match spec.failure_policy {
                    FailurePolicy::Fail => {
                        visit.result = TraceResult::ErrorFailed;
                        b.violation(
                            policy.source.clone(),
                            ViolationKind::EvaluationError,
                            e,
                            None,
                        );
                        ended = true;
                    }
                    FailurePolicy::Ignore => {
                        visit.result = TraceResult::ErrorIgnored;
                        b.warn(format!("{e} (ignored: failurePolicy Ignore)"));
                    }
                }
            }
            Ok(false) => visit.result = TraceResult::NotMatched,
            Ok(true) => {
                visit.result = TraceResult::Matched;
                let (end, note) = apply_match(policy, request, now, b);
                ended = end;
                visit.note = note;
            }
        }
        visits.push(visit);
    }
    if mode == Trace::UntilDecided {
        return;
    }
    let shown = Shown::new(&visits, mode);
    for at in shown.trace.union(&shown.matched).copied() {
        let Some(v) = visits.get(at) else { continue };
        if shown.matched.contains(&at) {
            b.d.matched_policies.push(MatchedPolicy {
                name: v.policy.name.clone(),
                action: v.policy.spec.action,
                reason: v.reason(&outcomes, contexts, now),
            });
        }
        if shown.trace.contains(&at) {
            b.d.trace.push(v.trace(&outcomes, contexts, now));
        }
    }
    b.d.trace_omitted = count(visits.len().saturating_sub(shown.trace.len()));
    b.d.matched_omitted = count(shown.matches.saturating_sub(shown.matched.len()));
}

/// What each condition evaluated came to, in order: whether it held, or (None) an error, whose
/// message is kept aside (errors are rare).
#[derive(Default)]
struct Outcomes {
    held: Vec<Option<bool>>,
    errors: HashMap<usize, String>,
}

impl Outcomes {
    fn push(&mut self, outcome: Result<bool, String>) {
        match outcome {
            Ok(held) => self.held.push(Some(held)),
            Err(e) => {
                self.errors.insert(self.held.len(), e);
                self.held.push(None);
            }
        }
    }

    fn len(&self) -> usize {
        self.held.len()
    }

    /// The outcomes from position `from` on: whether each held, and its error.
    fn from(&self, from: usize) -> impl Iterator<Item = (bool, Option<&String>)> {
        let held = self.held.iter().enumerate().skip(from);
        held.map(|(at, h)| (*h == Some(true), self.errors.get(&at)))
    }
}

/// What came of one policy in scope. Its trace entry, and the reason a match is shown with,
/// are written only for those a decision keeps.
struct Visit<'r> {
    policy: &'r Policy,
    result: TraceResult,
    /// Where the outcomes of its conditions begin among all outcomes.
    from: usize,
    /// The error, window or blackout that applied.
    note: Option<String>,
}

impl Visit<'_> {
    /// Why the policy matched, in words: the conditions that held and what was found.
    fn reason(&self, outcomes: &Outcomes, contexts: &mut Contexts, now: DateTime<Utc>) -> String {
        let Ok(parsed) = &self.policy.parsed else {
            return String::new(); // only parsed policies match
        };
        if parsed.conditions.is_empty() {
            return "no conditions: matches everything in scope".to_owned();
        }
        let mut said = String::from("held: ");
        let held = (parsed.conditions.iter().zip(&parsed.shared))
            .zip(outcomes.from(self.from))
            .filter(|(_, (held, _))| *held);
        for (at, ((c, shared), _)) in held.enumerate() {
            if at > 0 {
                said.push_str("; ");
            }
            said.push_str(&c.said);
            said.push_str(" (found ");
            write_json(&mut said, contexts.value(&c.field, *shared, now, parsed.tz));
            said.push(')');
        }
        said
    }

    fn trace(
        &self,
        outcomes: &Outcomes,
        contexts: &mut Contexts,
        now: DateTime<Utc>,
    ) -> PolicyTrace {
        let spec = &self.policy.spec;
        let evaluated = !matches!(self.result, TraceResult::NotReached | TraceResult::Disabled);
        let conditions = match &self.policy.parsed {
            Ok(parsed) if evaluated => (parsed.conditions.iter().zip(&parsed.shared))
                .zip(outcomes.from(self.from))
                .map(|((c, shared), (held, error))| ConditionTrace {
                    field: c.field.clone(),
                    operator: c.operator,
                    expected: c.value.clone(),
                    actual: contexts.value(&c.field, *shared, now, parsed.tz).clone(),
                    held,
                    error: error.cloned(),
                })
                .collect(),
            _ => vec![],
        };
        PolicyTrace {
            policy: self.policy.name.clone(),
            priority: spec.priority,
            action: spec.action,
            result: self.result,
            conditions,
            note: self.note.clone(),
        }
    }
}

/// Which visits a decision shows: every one (the full trace), or as the status keeps them
/// (see [`Decision::for_status`], which this selects exactly alike).
struct Shown {
    /// Visits whose trace entry is kept.
    trace: BTreeSet<usize>,
    /// Matched visits shown among the matched policies.
    matched: BTreeSet<usize>,
    /// How many matched.
    matches: usize,
}

impl Shown {
    fn new(visits: &[Visit], mode: Trace) -> Shown {
        let matched_at = visits
            .iter()
            .enumerate()
            .filter(|(_, v)| v.result == TraceResult::Matched && v.policy.parsed.is_ok())
            .map(|(at, _)| at);
        let matches = matched_at.clone().count();
        if mode != Trace::Status {
            return Shown {
                trace: (0..visits.len()).collect(),
                matched: matched_at.collect(),
                matches,
            };
        }
        let results: Vec<TraceResult> = visits.iter().map(|v| v.result).collect();
        let trace = kept_for_status(&results).into_iter().collect();
        Shown {
            trace,
            matched: matched_at.take(STATUS_MATCHED).collect(),
            matches,
        }
    }
}

/// Applies a matching policy: restrictions, then its action. Returns whether evaluation ends
/// here, and the note for its trace (the window or blackout that applied).
fn apply_match(
    policy: &Policy,
    request: &Request,
    now: DateTime<Utc>,
    b: &mut Builder,
) -> (bool, Option<String>) {
    let spec = &policy.spec;
    let source = policy.source.as_str();
    // Only parsed policies match; should one not be, it refuses (fail closed).
    let Ok(parsed) = policy.parsed.as_ref() else {
        let why = format!("policy {} is invalid", policy.name);
        b.violation(source.into(), ViolationKind::EvaluationError, why, None);
        return (true, None);
    };
    b.requirements.extend(spec.requirements.iter().copied());
    b.on_deploy.extend(spec.notify.on_deploy.iter().cloned());
    b.on_failure.extend(spec.notify.on_failure.iter().cloned());
    b.on_refusal.extend(spec.notify.on_refusal.iter().cloned());

    let mut notes = vec![];
    if spec.blocked_actions.contains(&request.spec.action) {
        let msg = format!(
            "action {} is blocked by policy {}",
            request.spec.action.as_str(),
            policy.name
        );
        b.violation(source.into(), ViolationKind::BlockedAction, msg, None);
    }
    if !parsed.windows.is_empty() && !parsed.windows.iter().any(|w| w.is_open(now)) {
        let opens = parsed.windows.iter().filter_map(|w| w.next_open(now)).min();
        let msg = match opens {
            Some(at) => format!(
                "outside the allowed windows of policy {}; the next window opens at {}",
                policy.name,
                at.to_rfc3339()
            ),
            None => format!("outside the allowed windows of policy {}", policy.name),
        };
        notes.push(msg.clone());
        b.violation(
            source.into(),
            ViolationKind::OutsideWindow,
            msg,
            opens.map(Clearance::At),
        );
    }
    let inside: Vec<_> = parsed
        .blackouts
        .iter()
        .filter(|p| p.contains(now))
        .collect();
    if let Some(end) = inside.iter().map(|p| p.end).max() {
        let reasons: Vec<&str> = inside.iter().map(|p| p.reason.as_str()).collect();
        let msg = format!(
            "inside a blackout of policy {} ({}) until {}",
            policy.name,
            reasons.join(", "),
            end.to_rfc3339()
        );
        notes.push(msg.clone());
        b.violation(
            source.into(),
            ViolationKind::Blackout,
            msg,
            Some(Clearance::At(end)),
        );
    }
    let note = (!notes.is_empty()).then(|| notes.join("; "));
    (apply_action(policy, parsed, source, b), note)
}

/// A matching policy's action. True when evaluation ends here.
fn apply_action(
    policy: &Policy,
    parsed: &super::rules::Parsed,
    source: &str,
    b: &mut Builder,
) -> bool {
    let spec = &policy.spec;
    match spec.action {
        PolicyAction::Allow => true,
        PolicyAction::Deny => {
            let msg = policy.message.clone();
            let clearance = parsed.time_dependent.then_some(Clearance::NextQuarterHour);
            b.violation(source.into(), ViolationKind::PolicyDenied, msg, clearance);
            true
        }
        PolicyAction::RequireApproval => {
            // Parsed RequireApproval policies have approval; should one not, it refuses.
            let Some(a) = spec.approval.as_ref() else {
                let why = format!("policy {} asks for approval but says by whom", policy.name);
                b.violation(source.into(), ViolationKind::EvaluationError, why, None);
                return true;
            };
            b.policy_requires_approval(ApprovalRequirement {
                source: source.into(),
                roles: human(a.roles.iter().copied()),
                min_approvals: a.min_approvals,
                expiry: a.expiry.clone(),
                allow_self_approval: a.allow_self_approval,
                require_mfa: a.require_mfa,
                break_glass_lifts: false,
            });
            false
        }
        PolicyAction::Warn => {
            b.warn(policy.message.clone());
            false
        }
        PolicyAction::AuditOnly => false,
    }
}

/// An approval by holders of `permission`, asked for by `source`.
fn approval_by_holders(source: String, permissions: &[Permission]) -> ApprovalRequirement {
    let mut roles = human(
        Role::ALL
            .into_iter()
            .filter(|r| permissions.iter().all(|p| r.grants(*p))),
    );
    if roles.is_empty() {
        roles = vec![Role::Admin];
    }
    ApprovalRequirement {
        source,
        roles,
        min_approvals: 1,
        expiry: DEFAULT_EXPIRY.to_owned(),
        allow_self_approval: false,
        require_mfa: false,
        break_glass_lifts: false,
    }
}

fn check_permission(rules: &Rules, request: &Request, subject: &Subject, b: &mut Builder) {
    let env = request.spec.environment.as_str();
    let permission = rules.mapping.permission_for(request.spec.action, env);
    gate_on_permission(
        rules,
        subject,
        permission,
        env,
        format!("permission/{permission}"),
        b,
    );
}

/// Records what the requester's lack of `permission` means: nothing, an approval, or a refusal.
fn gate_on_permission(
    rules: &Rules,
    subject: &Subject,
    permission: Permission,
    env: &str,
    source: String,
    b: &mut Builder,
) {
    match rules.mapping.can(subject, permission, env) {
        Check::Allowed { .. } => {}
        Check::NeedsApproval { reason } => {
            b.warn(reason);
            b.require_approval(approval_by_holders(
                format!("permission/{permission}"),
                &[permission],
            ));
        }
        Check::Denied { reason } => {
            b.violation(source, ViolationKind::PermissionDenied, reason, None)
        }
    }
}

fn apply_capabilities(rules: &Rules, request: &Request, subject: &Subject, b: &mut Builder) {
    let env = request.spec.environment.as_str();
    for name in capability::needed(&request.spec, rules.mapping.tier(env)) {
        let source = format!("capability/{name}");
        let note = |message: String| StepNote {
            capability: name.as_str().to_owned(),
            message,
        };
        match capability::effect(name, &rules.capabilities.get(name)) {
            Effect::Available {
                permissions,
                requires_approval,
            } => {
                for p in &permissions {
                    gate_on_permission(rules, subject, *p, env, source.clone(), b);
                }
                if requires_approval {
                    b.require_approval(approval_by_holders(source, &permissions));
                }
            }
            Effect::Blocked(message) => {
                b.violation(source, ViolationKind::CapabilityUnavailable, message, None)
            }
            Effect::Manual(message) => {
                b.manual = true;
                b.d.manual_instructions.push(message);
            }
            Effect::Skipped(message) => b.d.skipped_steps.push(note(message)),
            Effect::Degraded(message) => {
                b.warn(message.clone());
                b.d.degraded_steps.push(note(message));
            }
        }
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "next_opening_tests.rs"]
mod next_opening_tests;
