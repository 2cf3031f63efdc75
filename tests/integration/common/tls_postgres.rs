//! A throwaway PostgreSQL cluster that speaks TLS only (`hostssl` in
//! pg_hba.conf, plain connections rejected), for the database TLS tests.
//! Started once per test binary on first use. Its certificate, issued by a
//! test CA, names `db.outboxd.test` only: URLs reach it through
//! `hostaddr=127.0.0.1`, so no resolver is involved and connecting to
//! `127.0.0.1` by name is a name mismatch.
//!
//! Roles: `postgres` (trust), `certuser` (must show a client certificate
//! issued by the client CA) and `scramuser` (password, SCRAM).

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, chown};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use outboxd::config::DatabaseUrl;
use outboxd::db::{Db, DbError};
use outboxd::embedded::postgres::{Options, TempPostgres};
use tokio_postgres::Client;

use super::tls::TestCa;

/// The name in the server's certificate.
pub const SERVER_NAME: &str = "db.outboxd.test";
/// `scramuser`'s password.
pub const SCRAM_PASSWORD: &str = "correct horse";

const HBA: &str = "\
hostssl all certuser 127.0.0.1/32 trust clientcert=verify-ca
hostssl all scramuser 127.0.0.1/32 scram-sha-256
hostssl all all 127.0.0.1/32 trust
hostnossl all all 127.0.0.1/32 reject
";

pub struct TlsPostgres {
    server: TempPostgres,
    /// Client-side files: `ca.pem` (the server's CA), `other-ca.pem` (a CA
    /// that issued nothing here), `client.crt`/`client.key` (for
    /// `certuser`).
    files: PathBuf,
}

static TLS_CLUSTER: OnceLock<TlsPostgres> = OnceLock::new();

/// The shared TLS-only cluster.
pub fn tls_cluster() -> &'static TlsPostgres {
    TLS_CLUSTER.get_or_init(|| {
        // Its own thread and runtime: tests call this from inside theirs.
        std::thread::spawn(TlsPostgres::start)
            .join()
            .expect("starting the TLS test cluster")
    })
}

impl TlsPostgres {
    fn start() -> Self {
        let server = TempPostgres::start(&Options {
            unsafe_fast: true,
            settings: Vec::new(),
        })
        .expect("throwaway PostgreSQL (is the server installed? see .ci/install-postgres)");
        let data = server.data_dir();
        let server_ca = TestCa::new("outboxd test database CA");
        let client_ca = TestCa::new("outboxd test client CA");
        let identity = server_ca.issue(&[SERVER_NAME]);
        // PostgreSQL reads these as its own OS user and insists that
        // nobody else may read the key.
        let owner = std::fs::metadata(&data).unwrap();
        for (name, content, mode) in [
            ("server.crt", identity.cert_pem.as_str(), 0o644),
            ("server.key", identity.key_pem.as_str(), 0o600),
            ("client-ca.crt", &client_ca.cert_pem(), 0o644),
        ] {
            let path = data.join(name);
            std::fs::write(&path, content).unwrap();
            chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        append(
            &data.join("postgresql.conf"),
            "ssl = on\nssl_ca_file = 'client-ca.crt'\n",
        );
        std::fs::write(data.join("pg_hba.conf"), HBA).unwrap();
        server.stop("fast").unwrap();
        server.restart().unwrap();

        // Beside the data directory, in the cluster's own temporary root,
        // so they go when it goes.
        let files = data.parent().unwrap().join("client");
        std::fs::create_dir_all(&files).unwrap();
        let client = client_ca.issue(&["certuser"]);
        for (name, content) in [
            ("ca.pem", server_ca.cert_pem()),
            ("other-ca.pem", TestCa::new("some other CA").cert_pem()),
            ("client.crt", client.cert_pem),
            ("client.key", client.key_pem),
        ] {
            std::fs::write(files.join(name), content).unwrap();
        }
        let cluster = Self { server, files };
        cluster.create_roles();
        cluster
    }

    fn create_roles(&self) {
        let url = self.url("postgres", "sslmode=require");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let admin = connect(&url).await.expect("connecting over TLS");
            admin
                .batch_execute(&format!(
                    "CREATE ROLE certuser LOGIN;
                     SET password_encryption = 'scram-sha-256';
                     CREATE ROLE scramuser LOGIN PASSWORD '{SCRAM_PASSWORD}';"
                ))
                .await
                .unwrap();
        });
    }

    /// `postgres://{user}@db.outboxd.test:{port}/postgres`, reached at
    /// 127.0.0.1, with `params` (`key=value&…`) added.
    pub fn url(&self, user: &str, params: &str) -> String {
        self.url_for_host(user, SERVER_NAME, params)
    }

    /// As [`url`](Self::url), but naming the server `host`.
    pub fn url_for_host(&self, user: &str, host: &str, params: &str) -> String {
        format!(
            "postgres://{user}@{host}:{}/postgres?hostaddr=127.0.0.1&{params}",
            self.server.port()
        )
    }

    /// A client-side file (see [`TlsPostgres::files`]), as a path for a URL.
    pub fn file(&self, name: &str) -> String {
        self.files.join(name).to_str().unwrap().to_owned()
    }
}

fn append(path: &Path, text: &str) {
    let mut content = std::fs::read_to_string(path).unwrap();
    content.push_str(text);
    std::fs::write(path, content).unwrap();
}

/// Connects the way outboxd does.
pub async fn connect(url: &str) -> Result<Client, DbError> {
    Db::new(&DatabaseUrl::new(url))?.connect().await
}

/// Whether `client`'s session is encrypted, as the server sees it.
pub async fn encrypted(client: &Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}
