//! A scripted FTP control channel whose PASV reply names whatever address the test chooses,
//! and a listener that records every connection made to it: together they show whether a
//! client follows a lying `227` reply.
//!
//! ```ignore
//! let trap = Recorder::bind("127.0.0.9".parse()?).await;
//! let server = LyingFtp::start(trap.addr()).await;
//! // ... point a client with natWorkaround: false at 127.0.0.1:{server.port()} ...
//! assert_eq!(trap.connections(), 0);
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The lying server, on 127.0.0.1. Any user and password log in.
pub struct LyingFtp {
    addr: SocketAddr,
    commands: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl LyingFtp {
    /// Answers every PASV with `227 Entering Passive Mode (...)` naming `pasv` (IPv4).
    pub async fn start(pasv: SocketAddr) -> LyingFtp {
        LyingFtp::start_on("127.0.0.1".parse().unwrap(), pasv).await
    }

    pub async fn start_on(ip: IpAddr, pasv: SocketAddr) -> LyingFtp {
        let IpAddr::V4(v4) = pasv.ip() else {
            panic!("PASV can only name IPv4 addresses, not {pasv}");
        };
        let [a, b, c, d] = v4.octets();
        let reply = format!(
            "227 Entering Passive Mode ({a},{b},{c},{d},{},{})",
            pasv.port() >> 8,
            pasv.port() & 0xff
        );
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let commands = Arc::new(Mutex::new(Vec::new()));
        let log = commands.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, reply.clone(), log.clone()));
            }
        });
        LyingFtp {
            addr,
            commands,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every command received so far, upper-case verb and argument (PASS shows no argument).
    pub fn commands(&self) -> Vec<String> {
        self.commands.lock().unwrap().clone()
    }

    /// The verbs received so far.
    pub fn verbs(&self) -> Vec<String> {
        self.commands()
            .iter()
            .map(|c| c.split(' ').next().unwrap_or_default().to_string())
            .collect()
    }
}

impl Drop for LyingFtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(tcp: TcpStream, pasv_reply: String, log: Arc<Mutex<Vec<String>>>) {
    let (read, mut write) = tcp.into_split();
    let mut lines = BufReader::new(read).lines();
    if write.write_all(b"220 lying FTP ready\r\n").await.is_err() {
        return;
    }
    while let Ok(Some(line)) = lines.next_line().await {
        let (verb, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let verb = verb.to_ascii_uppercase();
        log.lock().unwrap().push(match verb.as_str() {
            "PASS" => "PASS".to_string(),
            _ if arg.is_empty() => verb.clone(),
            _ => format!("{verb} {arg}"),
        });
        let reply = match verb.as_str() {
            "USER" => "331 Password required".to_string(),
            "PASS" => "230 Logged in".to_string(),
            "TYPE" => "200 Type set".to_string(),
            "NOOP" | "OPTS" | "SITE" | "PBSZ" | "PROT" => "200 OK".to_string(),
            "PASV" => pasv_reply.clone(),
            "PWD" => "257 \"/\" is the current directory".to_string(),
            "CWD" | "DELE" | "RMD" | "RNTO" => "250 OK".to_string(),
            "MKD" => format!("257 \"{arg}\" created"),
            "RNFR" => "350 Ready for RNTO".to_string(),
            "SIZE" | "MDTM" | "MLST" => "550 No such file".to_string(),
            // Data commands: a client sends them only after opening the data connection,
            // which this server never accepts.
            "STOR" | "APPE" | "RETR" | "LIST" | "NLST" | "MLSD" => {
                "425 Cannot open data connection".to_string()
            }
            "QUIT" => {
                let _ = write.write_all(b"221 Bye\r\n").await;
                return;
            }
            _ => "502 Command not implemented".to_string(),
        };
        if write
            .write_all(format!("{reply}\r\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A listener that counts the connections it receives; where a lie points.
pub struct Recorder {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Recorder {
    pub async fn bind(ip: IpAddr) -> Recorder {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let count = hits.clone();
        let task = tokio::spawn(async move {
            // Keep the sockets: a connection that stays open looks like a working data channel.
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(tcp);
            }
        });
        Recorder { addr, hits, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn connections(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
