//! Bearer-token roles for the admin listener (SPEC §9): a viewer reads, an
//! operator reads and acts. Handlers state the role they need by taking a
//! [`Viewer`] or [`Operator`] argument; the extractor answers 401 or 403 before
//! the handler runs.
//!
//! Tokens are compared as SHA-256 digests in constant time, so neither the
//! content nor the length of a token leaks through response timing.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
}

/// A configured token, kept only as its SHA-256 and compared in constant time.
/// Every token check of both listeners (admin roles, storefront, Shiprocket's
/// tracking key) goes through one of these.
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn new(token: &Secret) -> Self {
        Self(digest(token.expose()))
    }

    pub fn matches(&self, presented: &str) -> bool {
        digest(presented).ct_eq(&self.0).into()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of an `Authorization: Bearer <token>` header, trimmed.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The admin tokens.
pub struct AdminTokens {
    viewer: TokenDigest,
    operator: TokenDigest,
}

impl AdminTokens {
    pub fn new(viewer: &Secret, operator: &Secret) -> Self {
        Self {
            viewer: TokenDigest::new(viewer),
            operator: TokenDigest::new(operator),
        }
    }

    /// The role a presented token grants, if any.
    pub fn role_of(&self, presented: &str) -> Option<Role> {
        // Both compared every time: the answer's timing says nothing about which matched.
        let is_operator = self.operator.matches(presented);
        let is_viewer = self.viewer.matches(presented);
        if is_operator {
            Some(Role::Operator)
        } else if is_viewer {
            Some(Role::Viewer)
        } else {
            None
        }
    }
}

/// Who made an admin request, for authorization and the audit log.
#[derive(Debug, Clone)]
pub struct Caller {
    pub role: Role,
    pub peer: Option<String>,
    pub user_agent: Option<String>,
}

fn authenticate(req: &HttpRequest) -> Result<Caller, ApiError> {
    let tokens = req
        .app_data::<web::Data<AdminTokens>>()
        .ok_or_else(ApiError::unauthorized)?;
    let presented = bearer(req).ok_or_else(ApiError::unauthorized)?;
    let role = tokens
        .role_of(presented)
        .ok_or_else(ApiError::unauthorized)?;
    // Left on the request for the audit middleware, which records who acted
    // once the answer is known.
    Ok(caller_of(req, role))
}

/// Any authenticated caller: a viewer or an operator.
pub struct Viewer(pub Caller);

/// An operator; a viewer gets 403.
pub struct Operator(pub Caller);

impl FromRequest for Viewer {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req).map(Viewer))
    }
}

impl FromRequest for Operator {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req).and_then(Operator::require))
    }
}

impl Operator {
    /// `caller` if it is an operator; 403 for a viewer. The one check of
    /// the role an action needs, for the API and the console alike.
    pub fn require(caller: Caller) -> Result<Operator, ApiError> {
        match caller.role {
            Role::Operator => Ok(Operator(caller)),
            Role::Viewer => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this action needs the operator token",
            )),
        }
    }
}

/// Who is asking, as [`authenticate`] would record it, for a caller that
/// proved its role some other way (a console session).
pub fn caller_of(req: &HttpRequest, role: Role) -> Caller {
    let caller = Caller {
        role,
        peer: req.peer_addr().map(|a| a.to_string()),
        user_agent: req
            .headers()
            .get(actix_web::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    req.extensions_mut().insert(caller.clone());
    caller
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_roles() {
        let tokens = AdminTokens::new(&Secret::new("view-token"), &Secret::new("op-token"));
        assert_eq!(tokens.role_of("view-token"), Some(Role::Viewer));
        assert_eq!(tokens.role_of("op-token"), Some(Role::Operator));
        assert_eq!(tokens.role_of("op-token "), None);
        assert_eq!(tokens.role_of(""), None);
        assert_eq!(tokens.role_of("OP-TOKEN"), None);
    }
}
