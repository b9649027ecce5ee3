//! REST/JSON on the side port, at the verbs and paths the `google.api.http` annotations of
//! `wechaty.Puppet` declare (upstream's, kept in `proto/wechaty/puppet.proto`).
//!
//! Nothing here knows a method: the routes are read from the embedded descriptor set at start, a
//! request is bound to the method's input message by the google.api.http rules (path variables,
//! then the body for `body: "*"`, else the query string), encoded, and called in-process on the
//! account's own `wechaty.Puppet` tower service — the one the gRPC port calls. The answer is
//! decoded and written as proto3 JSON (lowerCamelCase names, every field present, as a
//! grpc-gateway writes it); a gRPC status becomes its standard HTTP status with a
//! `google.rpc.Status` JSON body. The streaming methods (`Event`, `Download`, `Upload`) have
//! handlers of their own ([`super::events`], [`super::files`]).

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, ReflectMessage, Value,
};
use puppet_proto::ids::Shown;
use serde::de::DeserializeSeed;
use tonic::{Code, Status};
use tower::ServiceExt;

use crate::account::Account;

/// The service whose annotated methods are served.
pub const SERVICE: &str = "wechaty.Puppet";

/// One piece of a path template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    /// A literal segment.
    Lit(String),
    /// `*`: any one segment.
    Any,
    /// `**`: the rest of the path.
    Rest,
}

/// A template element: a segment, or a variable bound to a field over segments.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Seg(Seg),
    Var { field: String, pattern: Vec<Seg> },
}

/// One route: a verb and path template calling a method.
#[derive(Clone, Debug)]
pub struct Route {
    /// The HTTP verb.
    pub verb: Method,
    /// The path template as annotated (`/contacts/{id}`).
    pub template: String,
    parts: Vec<Part>,
    /// The method it calls.
    pub method: MethodDescriptor,
    /// The annotation's `body`: `*`, a field name, or empty for none.
    pub body: String,
}

impl Route {
    /// The fields its path binds, in order.
    pub fn path_fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var { field, .. } => Some(field.as_str()),
            Part::Seg(_) => None,
        })
    }

    /// The path template as OpenAPI writes it: `{type=PAYLOAD_TYPE_ROOM}` becomes its literal.
    pub fn openapi_path(&self) -> String {
        let mut out = String::new();
        for part in &self.parts {
            out.push('/');
            match part {
                Part::Seg(s) => out.push_str(&seg_text(s)),
                Part::Var { field, pattern } if pattern.iter().all(|s| matches!(s, Seg::Lit(_))) => {
                    out.push_str(&pattern.iter().map(seg_text).collect::<Vec<_>>().join("/"));
                    let _ = field;
                }
                Part::Var { field, .. } => {
                    out.push('{');
                    out.push_str(field);
                    out.push('}');
                }
            }
        }
        out
    }

    /// The variables whose pattern is all literal (`{type=PAYLOAD_TYPE_ROOM}`): fixed by the path.
    pub fn fixed_fields(&self) -> Vec<(&str, String)> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Var { field, pattern } if pattern.iter().all(|s| matches!(s, Seg::Lit(_))) => {
                    Some((field.as_str(), pattern.iter().map(seg_text).collect::<Vec<_>>().join("/")))
                }
                _ => None,
            })
            .collect()
    }

    /// Matches percent-decoded `segments`: the number of literal segments matched (more is a
    /// better match) and the variables' values.
    fn matches(&self, segments: &[String]) -> Option<(usize, Vec<(String, String)>)> {
        let mut at = 0;
        let mut score = 0;
        let mut vars = Vec::new();
        let take = |pattern: &[Seg], at: &mut usize, score: &mut usize| -> Option<Vec<String>> {
            let mut got = Vec::new();
            for seg in pattern {
                match seg {
                    Seg::Rest => {
                        got.extend(segments.get(*at..)?.iter().cloned());
                        *at = segments.len();
                    }
                    Seg::Any => {
                        got.push(segments.get(*at)?.clone());
                        *at += 1;
                    }
                    Seg::Lit(l) => {
                        if segments.get(*at)? != l {
                            return None;
                        }
                        *score += 1;
                        got.push(l.clone());
                        *at += 1;
                    }
                }
            }
            Some(got)
        };
        for part in &self.parts {
            match part {
                Part::Seg(s) => _ = take(std::slice::from_ref(s), &mut at, &mut score)?,
                Part::Var { field, pattern } => {
                    let got = take(pattern, &mut at, &mut score)?;
                    vars.push((field.clone(), got.join("/")));
                }
            }
        }
        (at == segments.len()).then_some((score, vars))
    }
}

fn seg_text(s: &Seg) -> String {
    match s {
        Seg::Lit(l) => l.clone(),
        Seg::Any => "*".into(),
        Seg::Rest => "**".into(),
    }
}

/// Parses a google.api.http path template (`/a/{b}/c/{d=x/*}`); custom verbs (`:verb`) are not
/// supported.
fn parse_template(template: &str) -> Result<Vec<Part>, String> {
    let rest = template.strip_prefix('/').ok_or_else(|| format!("template `{template}` does not start with /"))?;
    let mut raw = Vec::new();
    let mut current = String::new();
    let mut depth = 0;
    for c in rest.chars() {
        match c {
            '{' => {
                depth += 1;
                current.push(c);
            }
            '}' => {
                depth -= 1;
                current.push(c);
            }
            '/' if depth == 0 => raw.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    raw.push(current);
    let seg = |s: &str| -> Result<Seg, String> {
        match s {
            "*" => Ok(Seg::Any),
            "**" => Ok(Seg::Rest),
            "" => Err(format!("template `{template}` has an empty segment")),
            s if s.contains([':', '{', '}']) => Err(format!("template `{template}`: unsupported segment `{s}`")),
            s => Ok(Seg::Lit(s.to_owned())),
        }
    };
    raw.iter()
        .map(|r| match r.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            Some(var) => {
                let (field, pattern) = var.split_once('=').unwrap_or((var, "*"));
                let pattern = pattern.split('/').map(seg).collect::<Result<Vec<_>, _>>()?;
                Ok(Part::Var { field: field.to_owned(), pattern })
            }
            None => seg(r).map(Part::Seg),
        })
        .collect()
}

/// The REST routes, read from the descriptors.
#[derive(Clone, Debug)]
pub struct Rest {
    routes: Vec<Route>,
    pool: DescriptorPool,
}

/// Path variables: (field, value).
type Vars = Vec<(String, String)>;

/// What a request's path found.
pub enum Found<'a> {
    /// A route, with its path variables.
    Route(&'a Route, Vec<(String, String)>),
    /// Routes at this path, none for this verb: the verbs that are.
    OtherVerbs(Vec<Method>),
    /// No route at this path.
    None,
}

impl Rest {
    /// Reads the routes of [`SERVICE`] from `descriptor_set` (an encoded `FileDescriptorSet` that
    /// holds `google/api/annotations.proto`).
    pub fn from_descriptor_set(descriptor_set: &[u8]) -> anyhow::Result<Self> {
        let pool = DescriptorPool::decode(descriptor_set)?;
        let ext = pool
            .get_extension_by_name("google.api.http")
            .ok_or_else(|| anyhow::anyhow!("the descriptor set has no google.api.http extension"))?;
        let service =
            pool.get_service_by_name(SERVICE).ok_or_else(|| anyhow::anyhow!("the descriptor set has no {SERVICE}"))?;
        let mut routes = Vec::new();
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&ext) {
                continue;
            }
            let Value::Message(rule) = options.get_extension(&ext).into_owned() else { continue };
            add_rule(&mut routes, &method, &rule)?;
            if let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").map(Cow::into_owned) {
                for binding in more {
                    if let Value::Message(binding) = binding {
                        add_rule(&mut routes, &method, &binding)?;
                    }
                }
            }
        }
        Ok(Self { routes, pool })
    }

    /// The routes built into this server (the embedded descriptors).
    pub fn builtin() -> anyhow::Result<Self> {
        Self::from_descriptor_set(puppet_proto::pb::FILE_DESCRIPTOR_SET)
    }

    /// Every route.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The descriptors the routes came from.
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// The route for `verb` at `path` (raw, percent-encoded): the one that matches the most literal
    /// segments, the first declared among equals.
    pub fn find(&self, verb: &Method, path: &str) -> Result<Found<'_>, RestError> {
        let Some(path) = path.strip_prefix('/') else { return Ok(Found::None) };
        let segments = path
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(Cow::into_owned)
                    .map_err(|_| RestError::bad(format!("the path segment \"{}\" is not UTF-8", Shown(s))))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut best: Option<(usize, &Route, Vars)> = None;
        let mut verbs = Vec::new();
        for route in &self.routes {
            let Some((score, vars)) = route.matches(&segments) else { continue };
            if route.verb != verb {
                verbs.push(route.verb.clone());
                continue;
            }
            if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                best = Some((score, route, vars));
            }
        }
        Ok(match (best, verbs.is_empty()) {
            (Some((_, route, vars)), _) => Found::Route(route, vars),
            (None, false) => {
                verbs.dedup();
                Found::OtherVerbs(verbs)
            }
            (None, true) => Found::None,
        })
    }
}

fn add_rule(routes: &mut Vec<Route>, method: &MethodDescriptor, rule: &DynamicMessage) -> anyhow::Result<()> {
    let text = |name: &str| match rule.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let verbs = [("get", Method::GET), ("put", Method::PUT), ("post", Method::POST), ("delete", Method::DELETE)];
    let mut found = verbs.into_iter().chain([("patch", Method::PATCH)]).filter(|(n, _)| rule.has_field_by_name(n));
    // A rule with only additional bindings (DirtyPayload) has no pattern of its own.
    let Some((name, verb)) = found.next() else { return Ok(()) };
    let template = text(name);
    let parts = parse_template(&template).map_err(|e| anyhow::anyhow!("{}: {e}", method.full_name()))?;
    let input = method.input();
    for part in &parts {
        if let Part::Var { field, .. } = part {
            field_path(&input, field).map_err(|e| anyhow::anyhow!("{}: {}", method.full_name(), e.message))?;
        }
    }
    routes.push(Route { verb, template, parts, method: method.clone(), body: text("body") });
    Ok(())
}

/// A REST error: an HTTP status and a `google.rpc.Status` body.
#[derive(Debug)]
pub struct RestError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The gRPC code in the body.
    pub code: Code,
    /// What went wrong.
    pub message: String,
}

impl RestError {
    /// 400 INVALID_ARGUMENT.
    pub fn bad(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, code: Code::InvalidArgument, message: message.into() }
    }
}

impl From<Status> for RestError {
    fn from(s: Status) -> Self {
        Self { status: http_status(s.code()), code: s.code(), message: s.message().to_owned() }
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        status_response(self.status, self.code, &self.message)
    }
}

/// A `google.rpc.Status` JSON answer.
pub fn status_response(status: StatusCode, code: Code, message: &str) -> Response {
    let body = serde_json::json!({ "code": code as i32, "message": message, "details": [] });
    (status, [(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body.to_string())
        .into_response()
}

/// The HTTP status of a gRPC code, as grpc-gateway maps it.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The fields a dotted `path` names from `message` (proto or JSON names).
fn field_path(message: &MessageDescriptor, path: &str) -> Result<Vec<FieldDescriptor>, RestError> {
    let mut fields = Vec::new();
    let mut current = message.clone();
    for (i, name) in path.split('.').enumerate() {
        if i > 0 {
            match fields.last().map(FieldDescriptor::kind) {
                Some(Kind::Message(m)) if !fields.last().is_some_and(FieldDescriptor::is_list) => current = m,
                _ => return Err(RestError::bad(format!("`{}` has no field `{}`", Shown(path), Shown(name)))),
            }
        }
        let field = current
            .get_field_by_name(name)
            .or_else(|| current.get_field_by_json_name(name))
            .ok_or_else(|| RestError::bad(format!("unknown field `{}` (of {})", Shown(path), message.name())))?;
        fields.push(field);
    }
    Ok(fields)
}

/// A scalar field's value from its text in a path or query string.
fn scalar(field: &FieldDescriptor, name: &str, text: &str) -> Result<Value, RestError> {
    let wrong = |what: &str| RestError::bad(format!("field `{}`: \"{}\" is not {what}", Shown(name), Shown(text)));
    Ok(match field.kind() {
        Kind::String => Value::String(text.to_owned()),
        Kind::Bool => Value::Bool(text.parse().map_err(|_| wrong("true or false"))?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(text.parse().map_err(|_| wrong("a 32-bit integer"))?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(text.parse().map_err(|_| wrong("a 64-bit integer"))?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(text.parse().map_err(|_| wrong("an unsigned 32-bit integer"))?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(text.parse().map_err(|_| wrong("an unsigned 64-bit integer"))?),
        Kind::Float => Value::F32(text.parse().map_err(|_| wrong("a number"))?),
        Kind::Double => Value::F64(text.parse().map_err(|_| wrong("a number"))?),
        Kind::Bytes => {
            use base64::Engine;
            let e = base64::engine::general_purpose::STANDARD;
            let u = base64::engine::general_purpose::URL_SAFE;
            let trimmed = text.trim_end_matches('=');
            let bytes = e
                .decode(text)
                .or_else(|_| u.decode(text))
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed))
                .map_err(|_| wrong("base64"))?;
            Value::Bytes(bytes.into())
        }
        Kind::Enum(e) => match e.get_value_by_name(text) {
            Some(v) => Value::EnumNumber(v.number()),
            None => match text.parse::<i32>() {
                Ok(n) if e.get_value(n).is_some() => Value::EnumNumber(n),
                _ => {
                    let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
                    return Err(wrong(&format!("one of {}", names.join(", "))));
                }
            },
        },
        Kind::Message(m) => {
            return Err(RestError::bad(format!(
                "field `{}` is a {} message: send it in a JSON body, not in the path or query",
                Shown(name),
                m.name()
            )));
        }
    })
}

/// Sets the field at dotted `path` of `msg` from text (appending for a repeated field).
fn set_text(msg: &mut DynamicMessage, path: &str, text: &str) -> Result<(), RestError> {
    let fields = field_path(&msg.descriptor(), path)?;
    let Some((last, parents)) = fields.split_last() else { return Ok(()) };
    let mut target = msg;
    for parent in parents {
        let slot = target.get_field_mut(parent);
        target = match slot {
            Value::Message(m) => m,
            _ => return Err(RestError::bad(format!("`{}` is not a message", Shown(path)))),
        };
    }
    if last.is_map() {
        return Err(RestError::bad(format!("field `{}` is a map: send it in a JSON body", Shown(path))));
    }
    let value = scalar(last, path, text)?;
    if last.is_list() {
        if let Value::List(list) = target.get_field_mut(last) {
            list.push(value);
        }
    } else {
        target.set_field(last, value);
    }
    Ok(())
}

/// Parses a JSON `body` into `desc`, naming the field a problem is at.
pub fn from_json(desc: &MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, RestError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let parsed = desc.clone().deserialize(serde_path_to_error::Deserializer::new(&mut json, &mut track));
    let parsed = parsed.and_then(|m| json.end().map(|()| m));
    parsed.map_err(|e| {
        let path = track.path().to_string();
        let shown = shown_error(&e.to_string());
        let at = if path.is_empty() || path == "." { String::new() } else { format!(" at field `{}`", Shown(&path)) };
        if e.is_syntax() || e.is_eof() {
            RestError::bad(format!("the body is not valid JSON{at}: {shown}"))
        } else if at.is_empty() {
            RestError::bad(format!("the JSON body is not a {}: {shown}", desc.name()))
        } else {
            RestError::bad(format!("field `{}`: {shown}", Shown(&path)))
        }
    })
}

/// A serde error made safe to show: serde quotes the input, which is cut like any client text.
fn shown_error(text: &str) -> String {
    puppet_proto::ids::shown(text, 160)
}

/// Proto3 JSON of `msg`, every field present.
pub fn to_json(msg: &DynamicMessage) -> Result<Vec<u8>, RestError> {
    let mut out = Vec::new();
    let options = prost_reflect::SerializeOptions::new().skip_default_fields(false);
    let mut ser = serde_json::Serializer::new(&mut out);
    msg.serialize_with_options(&mut ser, &options)
        .map_err(|e| RestError::from(Status::internal(format!("cannot write the answer as JSON: {e}"))))?;
    Ok(out)
}

/// What a request carries for binding.
pub struct Input<'a> {
    /// The path variables.
    pub vars: Vec<(String, String)>,
    /// The raw query string.
    pub query: Option<&'a str>,
    /// The body.
    pub body: Bytes,
    /// Query keys that are not fields (`token` where a browser may pass it).
    pub ignored: &'a [&'a str],
}

/// The method's request message, bound from a request by the google.api.http rules.
pub fn bind(route: &Route, input: Input<'_>) -> Result<DynamicMessage, RestError> {
    let desc = route.method.input();
    let mut msg = match route.body.as_str() {
        "" => DynamicMessage::new(desc.clone()),
        "*" if input.body.iter().all(u8::is_ascii_whitespace) => DynamicMessage::new(desc.clone()),
        "*" => from_json(&desc, &input.body)?,
        field => {
            let fields = field_path(&desc, field)?;
            let mut msg = DynamicMessage::new(desc.clone());
            if let Some(f) = fields.first().filter(|_| !input.body.iter().all(u8::is_ascii_whitespace)) {
                let wrapped = [b"{\"".as_slice(), f.json_name().as_bytes(), b"\":", &input.body, b"}"].concat();
                let parsed = from_json(&desc, &wrapped)?;
                msg.set_field(f, parsed.get_field(f).into_owned());
            }
            msg
        }
    };
    if route.body != "*"
        && let Some(query) = input.query
    {
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if input.ignored.contains(&key.as_ref()) {
                continue;
            }
            if route.path_fields().any(|f| f == key) {
                return Err(RestError::bad(format!(
                    "`{}` is given in the path; leave it out of the query",
                    Shown(&key)
                )));
            }
            set_text(&mut msg, &key, &value)?;
        }
    }
    for (field, value) in &input.vars {
        if value.is_empty() {
            return Err(RestError::bad(format!(
                "missing path parameter `{field}` (the path has an empty segment there)"
            )));
        }
        set_text(&mut msg, field, value)?;
    }
    Ok(msg)
}

/// One gRPC message frame (uncompressed).
pub fn grpc_frame(msg: &impl Message) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    // Cannot fail: the buffer has room for the encoded length.
    _ = msg.encode(&mut buf);
    buf.freeze()
}

/// A gRPC request for `method` carrying `body` (frames), as the gRPC port would hand it over.
pub fn grpc_request(method: &MethodDescriptor, body: tonic::body::Body) -> http::Request<tonic::body::Body> {
    let mut req = http::Request::new(body);
    *req.method_mut() = Method::POST;
    *req.version_mut() = http::Version::HTTP_2;
    *req.uri_mut() = format!("/{}/{}", method.parent_service().full_name(), method.name())
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    let headers = req.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    req
}

/// Calls a unary method on the account's `wechaty.Puppet` service and decodes the answer.
pub async fn call_unary(
    account: &Account,
    method: &MethodDescriptor,
    msg: &DynamicMessage,
    max_answer: usize,
) -> Result<DynamicMessage, RestError> {
    let body = tonic::body::Body::new(http_body_util::Full::new(grpc_frame(msg)));
    call(account, method, body, max_answer).await
}

/// Calls a method with a single answer on the account's `wechaty.Puppet` service, the request
/// being `body` (gRPC frames), and decodes the answer.
pub async fn call(
    account: &Account,
    method: &MethodDescriptor,
    body: tonic::body::Body,
    max_answer: usize,
) -> Result<DynamicMessage, RestError> {
    let req = grpc_request(method, body);
    let Ok(response) = account.services.puppet.clone().oneshot(req).await;
    let (parts, mut body) = response.into_parts();
    if let Some(status) = Status::from_header_map(&parts.headers)
        && status.code() != Code::Ok
    {
        return Err(status.into());
    }
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(RestError::from)?;
        match frame.into_data() {
            Ok(chunk) => {
                if data.len() + chunk.len() > max_answer.saturating_add(5) {
                    return Err(Status::resource_exhausted(format!(
                        "the answer is larger than {max_answer} bytes (--max-message-kib)"
                    ))
                    .into());
                }
                data.extend_from_slice(&chunk);
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    if let Some(status) = trailers.as_ref().and_then(Status::from_header_map)
        && status.code() != Code::Ok
    {
        return Err(status.into());
    }
    let mut data = data.freeze();
    if data.len() < 5 || data[0] != 0 {
        return Err(Status::internal("the service answered no message").into());
    }
    data.advance(1);
    let len = data.get_u32() as usize;
    if data.len() < len {
        return Err(Status::internal("the service's answer was cut short").into());
    }
    DynamicMessage::decode(method.output(), data.slice(..len))
        .map_err(|e| Status::internal(format!("cannot decode the service's answer: {e}")).into())
}

impl From<tonic::Status> for Box<RestError> {
    fn from(s: Status) -> Self {
        Box::new(s.into())
    }
}

impl From<Box<dyn std::error::Error + Send + Sync>> for RestError {
    fn from(e: Box<dyn std::error::Error + Send + Sync>) -> Self {
        Status::from_error(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_annotated_method_has_a_route_and_literals_win() {
        let rest = Rest::builtin().unwrap();
        let methods: std::collections::BTreeSet<&str> = rest.routes().iter().map(|r| r.method.name()).collect();
        assert_eq!(methods.len(), 54, "{methods:?}");
        let find = |verb: Method, path: &str| match rest.find(&verb, path).unwrap() {
            Found::Route(r, vars) => (r.method.name().to_owned(), vars),
            Found::OtherVerbs(v) => (format!("verbs {v:?}"), vec![]),
            Found::None => ("none".into(), vec![]),
        };
        assert_eq!(find(Method::GET, "/contacts/self/qrcode").0, "ContactSelfQRCode");
        assert_eq!(find(Method::GET, "/contacts/abc%20d").1, vec![("id".into(), "abc d".into())]);
        assert_eq!(find(Method::DELETE, "/contacts/-/tags/t1").0, "TagContactDelete");
        assert_eq!(find(Method::DELETE, "/contacts/c1/tags/t1").0, "TagContactRemove");
        let (m, vars) = find(Method::PUT, "/rooms/r1/dirty/PAYLOAD_TYPE_ROOM");
        assert_eq!(m, "DirtyPayload");
        assert_eq!(vars, vec![("id".into(), "r1".into()), ("type".into(), "PAYLOAD_TYPE_ROOM".into())]);
        assert_eq!(find(Method::PUT, "/rooms/r1/dirty/PAYLOAD_TYPE_CONTACT").0, "none");
        assert_eq!(find(Method::DELETE, "/version").0, "verbs [GET]");
        assert_eq!(find(Method::GET, "/nope").0, "none");
    }

    #[test]
    fn binding_follows_the_rules_and_names_the_field() {
        let rest = Rest::builtin().unwrap();
        let Found::Route(route, vars) = rest.find(&Method::POST, "/conversations/c1/text").unwrap() else { panic!() };
        let input = |body: &'static str, vars: Vec<(String, String)>| Input {
            vars,
            query: None,
            body: Bytes::from_static(body.as_bytes()),
            ignored: &[],
        };
        let msg = bind(route, input(r#"{"text":"hi","mentionalIds":["a"]}"#, vars.clone())).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&to_json(&msg).unwrap()).unwrap();
        assert_eq!(json["conversationId"], "c1");
        assert_eq!(json["text"], "hi");
        let e = bind(route, input(r#"{"text":"hi","nope":1}"#, vars.clone())).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("nope"), "{}", e.message);
        let e = bind(route, input(r#"{"text":5}"#, vars.clone())).unwrap_err();
        assert!(e.message.contains("text"), "{}", e.message);
        let e = bind(route, input(r#"{"text":"#, vars.clone())).unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let e = bind(route, input("{}", vec![("conversation_id".into(), String::new())])).unwrap_err();
        assert!(e.message.contains("conversation_id"), "{}", e.message);

        let Found::Route(route, vars) = rest.find(&Method::GET, "/contacts").unwrap() else { panic!() };
        let e = bind(route, Input { vars, query: Some("x=1"), body: Bytes::new(), ignored: &[] }).unwrap_err();
        assert!(e.message.contains("`x`"), "{}", e.message);
    }

    #[test]
    fn grpc_codes_map_to_the_standard_http_statuses() {
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::Unimplemented), StatusCode::NOT_IMPLEMENTED);
        assert_eq!(http_status(Code::ResourceExhausted), StatusCode::TOO_MANY_REQUESTS);
    }
}
