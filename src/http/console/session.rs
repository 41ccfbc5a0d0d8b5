//! Console sign-in sessions: a signed-in browser holds an opaque random id in
//! a cookie, never the token it signed in with. The table lives in this
//! process's memory: a restart, or another instance's admin listener, asks
//! the operator to sign in again, which is what ending every session on a
//! restart should do anyway.
//!
//! A session ends when it is signed out or has been idle longer than the
//! configured time, measured on the daemon's clock (tests move it). Each one
//! carries its own CSRF token, which every form it is shown repeats, and a
//! message for the next page it renders (the answer of the last action).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use subtle::ConstantTimeEq;

use crate::domain::clock::SharedClock;
use crate::http::auth::Role;

/// The cookie holding the session id.
pub const COOKIE: &str = "dropshipd_console";

/// Sessions beyond this many are refused until some expire: signing in needs
/// a valid token, so only an operator's script could reach it.
const MAX_SESSIONS: usize = 10_000;

/// What one signed-in browser may do, as the pages and the server see it.
#[derive(Debug, Clone)]
pub struct Session {
    pub role: Role,
    pub csrf: String,
    last_seen_ms: i64,
    flash: Option<Flash>,
}

/// The outcome of an action, shown once on the page that follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

impl Session {
    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        self.csrf.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

/// A one-time sign-in link's grant.
struct Link {
    role: Role,
    expires_at_ms: i64,
}

#[derive(Default)]
struct Table {
    live: HashMap<String, Session>,
    links: HashMap<String, Link>,
}

pub struct Sessions {
    clock: SharedClock,
    idle_ms: i64,
    table: Mutex<Table>,
}

impl Sessions {
    pub fn new(clock: SharedClock, idle: Duration) -> Self {
        Self {
            clock,
            idle_ms: i64::try_from(idle.as_millis()).unwrap_or(i64::MAX),
            table: Mutex::new(Table::default()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock leaves a table that is still whole.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Signs a browser in as `role`: the new session's id, or why not.
    pub fn start(&self, role: Role) -> Result<(String, Session), NoSession> {
        let now = self.clock.now_ms();
        let mut table = self.table();
        let idle = self.idle_ms;
        table
            .live
            .retain(|_, s| now.saturating_sub(s.last_seen_ms) <= idle);
        if table.live.len() >= MAX_SESSIONS {
            return Err(NoSession::Full);
        }
        let id = random_token()?;
        let session = Session {
            role,
            csrf: random_token()?,
            last_seen_ms: now,
            flash: None,
        };
        table.live.insert(id.clone(), session.clone());
        Ok((id, session))
    }

    /// The session `id` names if it is live, its idle time starting again,
    /// with the message left for this page (taken: it shows once).
    pub fn resume(&self, id: &str) -> Option<(Session, Option<Flash>)> {
        let now = self.clock.now_ms();
        let mut table = self.table();
        let session = table.live.get_mut(id)?;
        if now.saturating_sub(session.last_seen_ms) > self.idle_ms {
            table.live.remove(id);
            return None;
        }
        session.last_seen_ms = now;
        let flash = session.flash.take();
        Some((session.clone(), flash))
    }

    /// Leaves `flash` for the next page session `id` renders.
    pub fn flash(&self, id: &str, flash: Flash) {
        if let Some(session) = self.table().live.get_mut(id) {
            session.flash = Some(flash);
        }
    }

    /// Signs session `id` out.
    pub fn end(&self, id: &str) {
        self.table().live.remove(id);
    }

    /// A code that signs one browser in as `role`, once, within `valid_for`.
    pub fn issue_link(&self, role: Role, valid_for: Duration) -> Result<String, NoSession> {
        let now = self.clock.now_ms();
        let code = random_token()?;
        let mut table = self.table();
        table.links.retain(|_, l| l.expires_at_ms > now);
        table.links.insert(
            code.clone(),
            Link {
                role,
                expires_at_ms: now
                    .saturating_add(i64::try_from(valid_for.as_millis()).unwrap_or(i64::MAX)),
            },
        );
        Ok(code)
    }

    /// The role a one-time code grants, spending it.
    pub fn redeem_link(&self, code: &str) -> Option<Role> {
        let now = self.clock.now_ms();
        let link = self.table().links.remove(code)?;
        (link.expires_at_ms > now).then_some(link.role)
    }
}

/// Why no session (or link) was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoSession {
    #[error("too many console sessions are open; try again once some have expired")]
    Full,
    #[error("the operating system's random source failed: {0}")]
    NoRandomness(String),
}

/// 32 random bytes, hex: unguessable ids and tokens.
fn random_token() -> Result<String, NoSession> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| NoSession::NoRandomness(e.to_string()))?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::clock::ManualClock;

    fn sessions(idle_secs: u64) -> (ManualClock, Sessions) {
        let clock = ManualClock::at_ms(1_000_000);
        let sessions = Sessions::new(Arc::new(clock.clone()), Duration::from_secs(idle_secs));
        (clock, sessions)
    }

    #[test]
    fn a_session_lives_while_used_and_ends_when_idle() {
        let (clock, sessions) = sessions(60);
        let (id, started) = sessions.start(Role::Operator).expect("room");
        assert_eq!(started.role, Role::Operator);
        clock.advance_ms(50000);
        assert!(sessions.resume(&id).is_some(), "used within the idle time");
        clock.advance_ms(50000);
        assert!(
            sessions.resume(&id).is_some(),
            "idle time counts from the last use"
        );
        clock.advance_ms(61000);
        assert!(sessions.resume(&id).is_none(), "idle too long");
        assert!(sessions.resume(&id).is_none(), "and gone for good");
    }

    #[test]
    fn signing_out_ends_the_session_and_ids_are_not_guessable() {
        let (_, sessions) = sessions(60);
        let (a, first) = sessions.start(Role::Viewer).expect("room");
        let (b, second) = sessions.start(Role::Viewer).expect("room");
        assert_ne!(a, b);
        assert_ne!(first.csrf, second.csrf);
        assert_eq!(a.len(), 64);
        sessions.end(&a);
        assert!(sessions.resume(&a).is_none());
        assert!(sessions.resume(&b).is_some());
        assert!(sessions.resume("").is_none());
    }

    #[test]
    fn csrf_tokens_compare_exactly() {
        let (_, sessions) = sessions(60);
        let (_, session) = sessions.start(Role::Operator).expect("room");
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches(&session.csrf[1..]));
    }

    #[test]
    fn a_flash_shows_once() {
        let (_, sessions) = sessions(60);
        let (id, _) = sessions.start(Role::Operator).expect("room");
        let done = Flash {
            ok: true,
            text: "retried 3 orders".into(),
        };
        sessions.flash(&id, done.clone());
        assert_eq!(sessions.resume(&id).and_then(|(_, f)| f), Some(done));
        assert_eq!(sessions.resume(&id).and_then(|(_, f)| f), None);
    }

    #[test]
    fn a_one_time_link_works_once_and_not_after_it_expires() {
        let (clock, sessions) = sessions(60);
        let code = sessions
            .issue_link(Role::Operator, Duration::from_secs(600))
            .expect("code");
        assert_eq!(sessions.redeem_link(&code), Some(Role::Operator));
        assert_eq!(sessions.redeem_link(&code), None, "spent");
        let late = sessions
            .issue_link(Role::Viewer, Duration::from_secs(600))
            .expect("code");
        clock.advance_ms(601000);
        assert_eq!(sessions.redeem_link(&late), None, "expired");
    }
}
