//! Every template of a connection compiled once into one environment, and the chains of
//! requests per event type.

use std::collections::{BTreeMap, BTreeSet};

use minijinja::{Environment, ErrorKind};

use super::TemplateError;
use super::env::{FUEL, Kind, describe, environment};
use super::render::EventContext;
use super::samples;
use crate::api::EventType;
use crate::api::apiconnection::{
    ApiConnectionSpec, ApiRequest, HttpMethod, ImageSend, RESERVED_HEADERS,
};

/// Fuel of one template run while checking names.
const CHECK_FUEL: u64 = 20_000;
/// Template runs of the name check, at most.
const CHECK_RUNS: usize = 5_000;

/// A connection's mappings, compiled. Cheap to share behind an `Arc`; rendering takes `&self`.
pub struct Compiled {
    pub(crate) env: Environment<'static>,
    mappings: Vec<MappingDef>,
}

struct MappingDef {
    events: Vec<EventType>,
    steps: Vec<StepDef>,
}

/// One request's templates: names in the environment, in the order of the spec.
pub(crate) struct StepDef {
    pub(crate) request: ApiRequest,
    pub(crate) path: String,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Option<String>,
    pub(crate) fields: Vec<(String, String)>,
    /// Every template: (name, field, source).
    templates: Vec<(String, String, String)>,
}

/// The ordered requests of one mapping.
#[derive(Clone, Copy)]
pub struct Chain<'a> {
    env: &'a Environment<'static>,
    mapping: usize,
    def: &'a MappingDef,
}

/// One request of a chain, ready to render.
#[derive(Clone, Copy)]
pub struct Step<'a> {
    pub(crate) env: &'a Environment<'static>,
    pub(crate) index: usize,
    pub(crate) def: &'a StepDef,
}

impl Compiled {
    /// Compiles every template of `spec`; all errors at once, in spec order.
    pub fn new(spec: &ApiConnectionSpec) -> Result<Compiled, Vec<TemplateError>> {
        let mut env = environment();
        let mut errors = Vec::new();
        // Headers the operator sets beyond the fixed ones: a mapping value would clash.
        let mut operator_headers = vec![spec.idempotency_header.to_ascii_lowercase()];
        if let Some(key) = spec.auth.as_ref().and_then(|a| a.api_key.as_ref()) {
            operator_headers.push(key.header.to_ascii_lowercase());
        }
        let mut mappings = Vec::new();
        for (m, mapping) in spec.mappings.iter().enumerate() {
            let mut steps = Vec::new();
            for (r, request) in mapping.requests.iter().enumerate() {
                let mut c = StepCompiler {
                    env: &mut env,
                    errors: &mut errors,
                    mapping: m,
                    events: &mapping.events,
                    index: r,
                    request,
                    operator_headers: &operator_headers,
                    templates: Vec::new(),
                };
                steps.push(c.compile());
            }
            mappings.push(MappingDef {
                events: mapping.events.clone(),
                steps,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // Less work per run while checking: a mapping with pathological templates must not
        // hold the reconciler (real templates take a few hundred steps).
        env.set_fuel(Some(CHECK_FUEL));
        let mut compiled = Compiled { env, mappings };
        let errors = compiled.check_names(&samples::sample_remote(spec));
        compiled.env.set_fuel(Some(FUEL));
        if errors.is_empty() {
            Ok(compiled)
        } else {
            Err(errors)
        }
    }

    /// Filters, tests and functions are looked up only when a template runs: each template
    /// is run on the sample events of its mapping (with and without captured values) so that
    /// an unknown name is an invalid template, not a failed delivery. Parts that no sample
    /// reaches are not checked, nor anything after [`CHECK_RUNS`] runs.
    fn check_names(&self, remote: &BTreeMap<String, String>) -> Vec<TemplateError> {
        let unknown = |e: &minijinja::Error| {
            matches!(
                e.kind(),
                ErrorKind::UnknownFilter | ErrorKind::UnknownTest | ErrorKind::UnknownFunction
            )
        };
        let mut errors = Vec::new();
        let mut runs = 0;
        for (m, mapping) in self.mappings.iter().enumerate() {
            for step in &mapping.steps {
                let mut reported = BTreeSet::new();
                let mut report = |field: &str, e: &minijinja::Error, source: &str| {
                    if unknown(e) && reported.insert(field.to_owned()) {
                        let d = describe(e, source, false);
                        errors.push(TemplateError {
                            mapping: m,
                            event_types: mapping.events.clone(),
                            request: step.request.name.clone(),
                            field: field.to_owned(),
                            line: d.line,
                            column: d.column,
                            message: d.message,
                        });
                    }
                };
                let events = mapping.events.iter().filter_map(|t| samples::sample(*t));
                for event in events {
                    for remote in [remote.clone(), BTreeMap::new()] {
                        runs += step.templates.len() + 1;
                        if runs > CHECK_RUNS {
                            return errors;
                        }
                        let ctx = EventContext::new(event, &samples::connection(), remote);
                        let per_image = step.request.for_each_image.is_some();
                        let image = (per_image && !ctx.images().is_empty()).then_some(0);
                        let vars = ctx.with_image(image);
                        for (name, field, source) in &step.templates {
                            let run = self.env.get_template(name).and_then(|t| t.render(&vars));
                            if let Err(e) = run {
                                report(field, &e, source);
                            }
                        }
                        if let Some(when) = &step.request.when {
                            let run =
                                (self.env.compile_expression(when)).and_then(|x| x.eval(&vars));
                            if let Err(e) = run {
                                report("when", &e, when);
                            }
                        }
                    }
                }
            }
        }
        errors
    }

    /// The chain that handles `event`, if a mapping lists it.
    pub fn chain(&self, event: EventType) -> Option<Chain<'_>> {
        self.chains().find(|c| c.events().contains(&event))
    }

    /// Every mapping's chain, in spec order.
    pub fn chains(&self) -> impl Iterator<Item = Chain<'_>> {
        self.mappings
            .iter()
            .enumerate()
            .map(|(mapping, def)| Chain {
                env: &self.env,
                mapping,
                def,
            })
    }
}

impl<'a> Chain<'a> {
    /// Index of the mapping in `spec.mappings`.
    pub fn mapping(&self) -> usize {
        self.mapping
    }

    pub fn events(&self) -> &'a [EventType] {
        &self.def.events
    }

    pub fn len(&self) -> usize {
        self.def.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.def.steps.is_empty()
    }

    pub fn step(&self, i: usize) -> Option<Step<'a>> {
        self.def.steps.get(i).map(|def| Step {
            env: self.env,
            index: i,
            def,
        })
    }

    pub fn steps(&self) -> impl Iterator<Item = Step<'a>> + use<'a> {
        let env = self.env;
        self.def
            .steps
            .iter()
            .enumerate()
            .map(move |(index, def)| Step { env, index, def })
    }
}

impl<'a> Step<'a> {
    /// Place in the chain, from 0.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn name(&self) -> &'a str {
        &self.def.request.name
    }

    pub fn method(&self) -> HttpMethod {
        self.def.request.method
    }

    /// The request as the spec has it.
    pub fn request(&self) -> &'a ApiRequest {
        &self.def.request
    }

    /// How images are sent when the request is repeated per image.
    pub fn for_each_image(&self) -> Option<ImageSend> {
        self.def.request.for_each_image.as_ref().map(|f| f.send)
    }
}

struct StepCompiler<'e, 's> {
    env: &'e mut Environment<'static>,
    errors: &'e mut Vec<TemplateError>,
    mapping: usize,
    events: &'s [EventType],
    index: usize,
    request: &'s ApiRequest,
    operator_headers: &'s [String],
    templates: Vec<(String, String, String)>,
}

impl StepCompiler<'_, '_> {
    fn compile(&mut self) -> StepDef {
        let r = self.request;
        self.check_shape();
        let path = self.add(Kind::Path, "path", &r.path);
        let query = (r.query.iter().flatten())
            .map(|(k, v)| (k.clone(), self.add(Kind::Text, &format!("query.{k}"), v)))
            .collect();
        let headers = (r.headers.iter().flatten())
            .map(|(k, v)| (k.clone(), self.add(Kind::Text, &format!("headers.{k}"), v)))
            .collect();
        let body = r.body.as_ref().map(|b| self.add(Kind::Json, "body", b));
        let fields = (r.for_each_image.iter())
            .flat_map(|f| f.fields.iter().flatten())
            .map(|(k, v)| {
                let field = format!("forEachImage.fields.{k}");
                (k.clone(), self.add(Kind::Text, &field, v))
            })
            .collect();
        if let Some(when) = &r.when
            && let Err(e) = self.env.compile_expression(when)
        {
            self.fail("when", Some((&e, when)), "");
        }
        StepDef {
            request: r.clone(),
            path,
            query,
            headers,
            body,
            fields,
            templates: std::mem::take(&mut self.templates),
        }
    }

    /// Adds a template; its name even when it fails, so the step is complete.
    fn add(&mut self, kind: Kind, field: &str, source: &str) -> String {
        let name = kind.name(self.mapping, self.index, field);
        if let Err(e) = self.env.add_template_owned(name.clone(), source.to_owned()) {
            self.fail(field, Some((&e, source)), "");
        }
        let entry = (name.clone(), field.to_owned(), source.to_owned());
        self.templates.push(entry);
        name
    }

    /// What the CRD's rules refuse, checked again for files that never went through the API
    /// server (the `render` command).
    fn check_shape(&mut self) {
        let r = self.request;
        if !r.path.starts_with('/') {
            self.fail("path", None, "must start with '/'");
        }
        if r.path.contains(['?', '#']) {
            self.fail("path", None, "must not hold a query or fragment; use query");
        }
        let send = r.for_each_image.as_ref().map(|f| f.send);
        if r.body.is_some() && matches!(send, Some(ImageSend::Raw | ImageSend::Multipart)) {
            self.fail(
                "body",
                None,
                "forEachImage.send raw and multipart send the image, not a body",
            );
        }
        let fields = r.for_each_image.as_ref().and_then(|f| f.fields.as_ref());
        if fields.is_some() && send != Some(ImageSend::Multipart) {
            self.fail(
                "forEachImage.fields",
                None,
                "only forEachImage.send multipart has fields",
            );
        }
        for name in r.headers.iter().flatten().map(|(k, _)| k) {
            let lower = name.to_ascii_lowercase();
            let token = |c: char| c.is_ascii_alphanumeric() || c == '-';
            if name.is_empty() || name.len() > 64 || !name.chars().all(token) {
                let msg = "header names are letters, digits and '-' (at most 64)";
                self.fail(&format!("headers.{name}"), None, msg);
            } else if RESERVED_HEADERS.contains(&lower.as_str())
                || self.operator_headers.contains(&lower)
            {
                self.fail(&format!("headers.{name}"), None, "is set by the operator");
            } else if lower == "content-type"
                && matches!(send, Some(ImageSend::Raw | ImageSend::Multipart))
            {
                let msg = "comes from the image or the multipart boundary";
                self.fail(&format!("headers.{name}"), None, msg);
            }
        }
        // Part names go into a Content-Disposition header, between quotes.
        for name in fields.into_iter().flatten().map(|(k, _)| k) {
            if name.is_empty()
                || name
                    .chars()
                    .any(|c| c.is_control() || c == '"' || c == '\\')
            {
                let msg = "part names must not be empty or hold quotes, backslashes or control characters";
                self.fail(&format!("forEachImage.fields.{name}"), None, msg);
            }
        }
    }

    fn fail(&mut self, field: &str, err: Option<(&minijinja::Error, &str)>, message: &str) {
        let (line, column, message) = match err {
            Some((e, source)) => {
                let d = describe(e, source, false);
                (d.line, d.column, d.message)
            }
            None => (None, None, message.to_owned()),
        };
        self.errors.push(TemplateError {
            mapping: self.mapping,
            event_types: self.events.to_vec(),
            request: self.request.name.clone(),
            field: field.to_owned(),
            line,
            column,
            message,
        });
    }
}
