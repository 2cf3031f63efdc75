//! `--tenants M`: the endpoints spread over M tenants, endpoint `e{i}` in
//! tenant `t{i % M}`, and every message carrying the tenant of the
//! endpoints it fans out to. For that, an endpoint subscribes to message
//! types M apart (`t{i}`, `t{i+M}`, ...): the endpoints of type `t{j}` are
//! then all in tenant `t{j % M}`. With no tenants (the default) or one, the
//! types are consecutive, as they always were.
//!

use anyhow::bail;
use tokio_postgres::Client;

/// How endpoints and message types map to tenants.
#[derive(Debug, Clone, Copy)]
pub struct Tenancy {
    tenants: u32,
    endpoints: u32,
}

impl Tenancy {
    /// The mapping for `tenants` (0: none) over `endpoints`, each message
    /// going to `fan_out` of them; an error says which flag to change.
    pub fn new(tenants: u32, endpoints: u32, fan_out: u32) -> Result<Self, String> {
        if tenants > 1 {
            if !endpoints.is_multiple_of(tenants) {
                return Err(format!(
                    "--endpoints ({endpoints}) must be a multiple of --tenants ({tenants})"
                ));
            }
            if fan_out * tenants > endpoints {
                return Err(format!(
                    "--fan-out x --tenants must not exceed --endpoints ({endpoints}): \
                     a message goes to --fan-out endpoints of its own tenant"
                ));
            }
        }
        Ok(Self { tenants, endpoints })
    }

    /// The message types endpoint `i` subscribes to.
    pub fn types_of(&self, i: u32, fan_out: u32) -> Vec<String> {
        let stride = self.tenants.max(1);
        (0..fan_out)
            .map(|k| format!("t{}", (i + k * stride) % self.endpoints))
            .collect()
    }

    /// Endpoint `i`'s tenant, `None` without tenants.
    pub fn of_endpoint(&self, i: u32) -> Option<String> {
        (self.tenants > 0).then(|| format!("t{}", i % self.tenants))
    }

    /// The tenant of the messages of type `t{j}`: that of the endpoints
    /// subscribed to it.
    pub fn of_type(&self, j: u32) -> Option<String> {
        self.of_endpoint(j % self.endpoints)
    }

    /// How many tenants (0: none), for the SQL that spreads messages.
    pub fn tenants(&self) -> u32 {
        self.tenants
    }

    /// [`of_type`](Self::of_type) as an SQL literal: `'t3'` or `NULL`.
    pub fn of_type_sql(&self, j: u32) -> String {
        // Bench tenants are `t` and digits: nothing to escape.
        self.of_type(j)
            .map_or_else(|| "NULL".to_owned(), |t| format!("'{t}'"))
    }
}

/// Refuses `--tenants` on a schema without `tenant_id` columns (a server
/// migrated by an older outboxd).
pub async fn check_schema(client: &Client, tenants: u32) -> anyhow::Result<()> {
    if tenants == 0 {
        return Ok(());
    }
    let columns: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.columns
             WHERE table_schema = 'outbox' AND table_name IN ('endpoints', 'messages')
               AND column_name = 'tenant_id'",
            &[],
        )
        .await?
        .get(0);
    if columns < 2 {
        bail!(
            "--tenants needs outbox.endpoints.tenant_id and outbox.messages.tenant_id, \
             which this schema does not have yet"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every endpoint subscribed to a type is in that type's tenant, and
    /// each type has `fan_out` distinct endpoints.
    fn check(tenants: u32, endpoints: u32, fan_out: u32) {
        let tenancy = Tenancy::new(tenants, endpoints, fan_out).unwrap();
        for j in 0..endpoints {
            let ty = format!("t{j}");
            let subscribed: Vec<u32> = (0..endpoints)
                .filter(|&i| tenancy.types_of(i, fan_out).contains(&ty))
                .collect();
            assert_eq!(subscribed.len() as u32, fan_out, "type {ty}");
            for i in subscribed {
                assert_eq!(tenancy.of_endpoint(i), tenancy.of_type(j), "e{i}, {ty}");
            }
        }
    }

    #[test]
    fn a_message_fans_out_within_its_tenant() {
        for (tenants, endpoints, fan_out) in [(0, 5, 3), (1, 5, 3), (4, 8, 2), (10, 1000, 1)] {
            check(tenants, endpoints, fan_out);
        }
    }

    #[test]
    fn endpoint_i_is_in_tenant_i_mod_m() {
        let tenancy = Tenancy::new(3, 9, 1).unwrap();
        assert_eq!(tenancy.of_endpoint(7).as_deref(), Some("t1"));
        assert_eq!(Tenancy::new(0, 9, 1).unwrap().of_endpoint(7), None);
    }

    #[test]
    fn without_tenants_subscriptions_are_consecutive_as_before() {
        assert_eq!(
            Tenancy::new(0, 5, 3).unwrap().types_of(4, 3),
            ["t4", "t0", "t1"]
        );
    }

    #[test]
    fn spreads_that_would_cross_tenants_are_refused() {
        assert!(Tenancy::new(3, 10, 1).unwrap_err().contains("multiple"));
        assert!(Tenancy::new(4, 8, 3).unwrap_err().contains("--fan-out"));
    }
}
