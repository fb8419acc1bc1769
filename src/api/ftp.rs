//! `FtpConnection`: upload each processed vehicle's images to a client's FTP server by the
//! client's naming rules.

// Each `printcolumn(...)` repeats `type_ = ...`; clippy reads that as a duplicate.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::*;
use super::event::EventType;

/// A client's FTP server, the events that trigger uploads and how files are named.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "connect.vehicles.io",
    version = "v1alpha1",
    kind = "FtpConnection",
    doc = "A client's FTP server: which vehicles to upload there, and the naming rules.",
    namespaced,
    status = "FtpConnectionStatus",
    shortname = "ftpc",
    category = "vehicle-connect",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Connected",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Connected")].status"#
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#
    ),
    printcolumn(
        name = "Delivering",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Delivering")].status"#
    ),
    printcolumn(name = "Client", type_ = "string", json_path = ".spec.clientId"),
    printcolumn(name = "Host", type_ = "string", json_path = ".spec.host"),
    printcolumn(
        name = "Layout",
        type_ = "string",
        json_path = ".spec.rules.layout",
        priority = 1
    ),
    printcolumn(name = "Uploaded", type_ = "integer", json_path = ".status.uploaded"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.failed"),
    printcolumn(
        name = "Last Upload",
        type_ = "date",
        json_path = ".status.lastUpload.time"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].message"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("!has(self.caSecretRef) || self.protocol in ['ftps', 'ftps-implicit']").message("caSecretRef needs protocol ftps or ftps-implicit").field_path(".caSecretRef"),
    validation = Rule::new("self.protocol != 'sftp' || (has(self.ssh) && (has(self.ssh.knownHostsSecretRef) || has(self.ssh.knownHostsConfigMapRef) || self.ssh.insecureSkipHostKeyCheck))").message("protocol sftp needs ssh.knownHostsSecretRef or ssh.knownHostsConfigMapRef: the server's host keys, pinned (or ssh.insecureSkipHostKeyCheck: true, which lets anyone on the path impersonate the server)").field_path(".ssh"),
    validation = Rule::new("!has(self.ssh) || self.protocol == 'sftp'").message("ssh settings need protocol sftp").field_path(".ssh")
)]
#[serde(rename_all = "camelCase")]
pub struct FtpConnectionSpec {
    /// FTP server host name or IP address.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|[0-9A-Fa-f:.]+)$")
    )]
    pub host: String,

    /// Control port: 21 unless set, 22 for `sftp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,

    /// `ftp`, `ftps` (explicit TLS with AUTH TLS), `ftps-implicit` (TLS from the first byte)
    /// or `sftp` (file transfer over SSH).
    #[serde(default)]
    pub protocol: FtpProtocol,

    /// Secret with keys `username` and `password`. For `sftp`, key `ssh-privatekey` (an
    /// OpenSSH or PEM private key, optionally encrypted with key `passphrase`) can stand
    /// in for the password; a Secret of type `kubernetes.io/ssh-auth` holds it that way.
    pub credentials_secret_ref: SecretRef,

    /// SSH settings for `protocol: sftp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshSettings>,

    /// CA certificate(s) to trust for FTPS (key `ca.crt` unless set). Without it the system
    /// roots are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,

    /// Client whose vehicles are uploaded. The namespace must allow it through its
    /// `connect.vehicles.io/clients` annotation.
    #[schemars(length(min = 1, max = 128), regex(pattern = ID))]
    pub client_id: String,

    /// Only vehicles of these users (a user-level connection). Omit for a client-level
    /// connection: every user of the client, present and future.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000), inner(length(min = 1, max = 128), regex(pattern = ID)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub user_ids: Option<Vec<String>>,

    /// Events that trigger an upload (or, for `vehicle.deleted`, a removal).
    #[serde(default = "default_events")]
    #[schemars(length(min = 1, max = 5))]
    #[x_kube(
        merge_strategy = ListMerge::Set,
        validation = Rule::new("self.all(e, e in ['vehicle.processed', 'vehicle.images_uploaded', 'vehicle.image_uploaded', 'image.cropped_processed', 'vehicle.deleted'])").message("FTP connections act on vehicle.processed, vehicle.images_uploaded, vehicle.image_uploaded, image.cropped_processed and vehicle.deleted only")
    )]
    pub events: Vec<EventType>,

    /// Where and under which names files are written.
    #[serde(default)]
    pub rules: FtpRules,

    /// Passive mode (the client opens data connections); on by default.
    #[serde(default = "default_true")]
    pub passive: bool,

    /// Use EPSV instead of PASV for passive mode.
    #[serde(default)]
    pub epsv: bool,

    /// Connect data channels to the control connection's address, ignoring the address in
    /// the PASV reply (servers behind NAT often announce a private one).
    #[serde(default = "default_true")]
    pub nat_workaround: bool,

    /// FTP sessions open at once to this server (servers limit sessions per user).
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1, max = 16))]
    pub max_connections: u32,

    /// Network timeouts.
    #[serde(default)]
    pub timeouts: FtpTimeouts,

    /// Retries of failed uploads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,

    /// Stop uploading; events are kept and processed after resuming.
    #[serde(default)]
    pub suspend: bool,

    /// Deliver the stored events of a window again, once per `replay.id` (see
    /// `status.lastReplay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplaySpec>,
}

fn default_true() -> bool {
    true
}
fn default_max_connections() -> u32 {
    2
}
fn default_events() -> Vec<EventType> {
    vec![EventType::VehicleProcessed]
}

/// File transfer protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FtpProtocol {
    #[default]
    #[serde(rename = "ftp")]
    Ftp,
    #[serde(rename = "ftps")]
    Ftps,
    #[serde(rename = "ftps-implicit")]
    FtpsImplicit,
    #[serde(rename = "sftp")]
    Sftp,
}

impl FtpProtocol {
    /// As written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            FtpProtocol::Ftp => "ftp",
            FtpProtocol::Ftps => "ftps",
            FtpProtocol::FtpsImplicit => "ftps-implicit",
            FtpProtocol::Sftp => "sftp",
        }
    }

    /// The port used when the spec sets none.
    pub fn default_port(self) -> u16 {
        match self {
            FtpProtocol::Sftp => 22,
            _ => 21,
        }
    }
}

/// How the operator trusts an SFTP server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.knownHostsSecretRef) && has(self.knownHostsConfigMapRef))").message("set one of knownHostsSecretRef or knownHostsConfigMapRef"))]
pub struct SshSettings {
    /// The server's host keys in OpenSSH `known_hosts` format (key `known_hosts` unless set),
    /// for example from `ssh-keyscan -p PORT HOST` checked against what the client says.
    /// A server presenting any other key is refused: `Connected=False/HostKeyMismatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts_secret_ref: Option<SecretKeyRef>,

    /// The same, from a ConfigMap (host keys are public; key `known_hosts` unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts_config_map_ref: Option<ConfigMapKeyRef>,

    /// Accept whatever host key the server presents. Anyone on the network path can then
    /// impersonate the server and receive the uploads (and a password); for tests only.
    #[serde(default)]
    pub insecure_skip_host_key_check: bool,
}

/// The client's naming rules. Templates use placeholders in braces: `{vin}`, `{stock}`,
/// `{index}` (or zero-padded, `{index:02}`), `{ext}`, `{client}`, `{user}`, `{vehicle}`,
/// `{make}`, `{model}`, `{year}`, `{event}`, `{date}` (YYYYMMDD), `{time}` (HHMMSS);
/// `{{` and `}}` are literal braces. Rendered values never contain `/`, `..` or control
/// characters, and paths never leave `baseDirectory`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FtpRules {
    /// Fixed directory everything is written under (relative to the login directory, or
    /// absolute). Created if missing.
    #[serde(default)]
    #[schemars(length(max = 255))]
    #[x_kube(
        validation = Rule::new("!self.split('/').exists(p, p == '..')").message("must not contain '..'"),
        // Windows FTP servers also split on '\', so `..\..` would escape too.
        validation = Rule::new(r"!self.contains('\\') && !self.matches('\\p{Cc}')").message("must use '/' separators and contain no backslashes or control characters")
    )]
    pub base_directory: String,

    /// Template of a sub-directory of `baseDirectory` per vehicle (empty: none).
    #[serde(default)]
    #[schemars(length(max = 255))]
    pub directory: String,

    /// `files`: one file per image; `zip`: one archive per vehicle.
    #[serde(default)]
    pub layout: Layout,

    /// Template of each image's file name (`files` layout, and names inside the zip).
    #[serde(default = "default_file_name")]
    #[schemars(length(min = 1, max = 255))]
    pub file_name: String,

    /// Template of the archive's name (`zip` layout).
    #[serde(default = "default_archive_name")]
    #[schemars(length(min = 1, max = 255))]
    pub archive_name: String,

    /// Also write a JSON file with the vehicle, the user who uploaded it and the image list,
    /// last, as a commit marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<MetadataFile>,

    /// What to do when a file of the same name exists.
    #[serde(default)]
    pub on_existing: OnExisting,

    /// On `vehicle.deleted` (if subscribed), remove the files this connection wrote.
    #[serde(default)]
    pub delete_on_vehicle_deleted: bool,
}

fn default_file_name() -> String {
    "{vin}_{index:02}.{ext}".into()
}
fn default_archive_name() -> String {
    "{vin}.zip".into()
}
fn default_metadata_name() -> String {
    "{vin}.json".into()
}

impl Default for FtpRules {
    fn default() -> Self {
        FtpRules {
            base_directory: String::new(),
            directory: String::new(),
            layout: Layout::default(),
            file_name: default_file_name(),
            archive_name: default_archive_name(),
            metadata: None,
            on_existing: OnExisting::default(),
            delete_on_vehicle_deleted: false,
        }
    }
}

/// The JSON metadata file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetadataFile {
    /// Template of its name.
    #[serde(default = "default_metadata_name")]
    #[schemars(length(min = 1, max = 255))]
    pub file_name: String,
}

/// Upload layout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    #[default]
    Files,
    Zip,
}

/// Policy for a file that already exists on the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnExisting {
    #[default]
    Overwrite,
    Skip,
    Fail,
}

/// Network timeouts in seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FtpTimeouts {
    /// TCP connect, TLS handshake and login.
    #[serde(default = "default_connect_timeout")]
    #[schemars(range(min = 1, max = 120))]
    pub connect_seconds: u32,
    /// Each command, data transfer step and the final reply.
    #[serde(default = "default_command_timeout")]
    #[schemars(range(min = 1, max = 600))]
    pub command_seconds: u32,
}

fn default_connect_timeout() -> u32 {
    10
}
fn default_command_timeout() -> u32 {
    30
}

impl Default for FtpTimeouts {
    fn default() -> Self {
        FtpTimeouts {
            connect_seconds: default_connect_timeout(),
            command_seconds: default_command_timeout(),
        }
    }
}

/// What the operator observed and did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FtpConnectionStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (configured and able to upload) and `Connected` (last login probe).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Vehicles uploaded.
    #[serde(default)]
    pub uploaded: u64,
    /// Files written.
    #[serde(default)]
    pub files: u64,
    /// Bytes written.
    #[serde(default)]
    pub bytes: u64,
    /// Vehicles given up on.
    #[serde(default)]
    pub failed: u64,
    /// Vehicles waiting for upload or retry.
    #[serde(default)]
    pub pending: u64,
    /// Failed attempts since the last success.
    #[serde(default)]
    pub consecutive_failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_upload: Option<DeliveryRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<FailureRecord>,
    /// The replay last carried out (`spec.replay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_replay: Option<LastReplay>,
}

impl FtpConnectionSpec {
    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(self.protocol.default_port())
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry.clone().unwrap_or_default()
    }
}
