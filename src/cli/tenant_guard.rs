//! The `--tenant T` guard of the recovery commands (`resend`, `recover`,
//! `retry-schedule`): support staff acting for one customer must not touch
//! another's deliveries or endpoints by a typo. Also names who asked, for
//! the `outbox.events` row each recovery tool writes.

use anyhow::bail;

/// Fails unless something (`what`, for the message) whose tenant is
/// `owner` belongs to `tenant`; passes when no tenant is asked for.
pub fn check(what: &str, owner: Option<&str>, tenant: Option<&str>) -> anyhow::Result<()> {
    let Some(tenant) = tenant else {
        return Ok(());
    };
    match owner {
        Some(owner) if owner == tenant => Ok(()),
        Some(owner) => bail!("{what} belongs to tenant {owner}, not {tenant}; nothing changed"),
        None => bail!("{what} belongs to no tenant, not {tenant}; nothing changed"),
    }
}

/// `triggered_by` for a command run from the shell: the command, the OS
/// user when known, and the operator's note.
pub fn triggered_by(command: &str, note: Option<&str>) -> String {
    let user = std::env::var("USER").ok().filter(|u| !u.is_empty());
    let mut who = format!("cli: outboxd {command}");
    if let Some(user) = user {
        who.push_str(&format!(" by {user}"));
    }
    if let Some(note) = note {
        who.push_str(&format!(" ({note})"));
    }
    who
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_refuses_other_tenants_and_none() {
        assert!(check("endpoint e", Some("acme"), Some("acme")).is_ok());
        assert!(check("endpoint e", None, None).is_ok());
        let other = check("endpoint e", Some("globex"), Some("acme")).unwrap_err();
        assert!(other.to_string().contains("tenant globex, not acme"));
        let none = check("endpoint e", None, Some("acme")).unwrap_err();
        assert!(none.to_string().contains("no tenant"));
    }
}
