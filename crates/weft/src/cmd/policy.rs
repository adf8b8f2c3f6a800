//! `weft policy set|get|check|history`: the tailnet policy file (HuJSON ACLs) through the
//! server's admin API. With no policy set the tailnet allows all traffic between its nodes.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::json;
use weft_control::admin::PolicyInfo;

use super::admin::Conn;

#[derive(Debug, Args)]
pub(crate) struct PolicyCmd {
    #[command(subcommand)]
    cmd: PolicySub,
}

#[derive(Debug, Subcommand)]
enum PolicySub {
    /// Check FILE (syntax, then its `tests` against the tailnet) and apply it. A refused
    /// policy leaves the previous one in force.
    Set {
        /// HuJSON policy file (`-` for stdin).
        file: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print the policy in force.
    Get {
        #[command(flatten)]
        conn: Conn,
    },
    /// Check FILE and run its `tests` without applying it.
    Check {
        /// HuJSON policy file (`-` for stdin).
        file: PathBuf,
        /// Check without a server: tests run against an empty tailnet.
        #[arg(long)]
        local: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List the policy versions, newest first, with author and time.
    History {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

fn read(file: &PathBuf) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        return Ok(s);
    }
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

pub(crate) async fn run(c: PolicyCmd) -> anyhow::Result<()> {
    match c.cmd {
        PolicySub::Set { file, conn } => {
            let text = read(&file)?;
            let v = conn
                .call(
                    Method::POST,
                    "/api/v1/policy",
                    Some(json!({ "text": text })),
                )
                .await?;
            let p: PolicyInfo = serde_json::from_value(v)?;
            println!(
                "policy version {} applied ({} tests passed), by {} at {}",
                p.id, p.tests, p.author, p.created
            );
        }
        PolicySub::Get { conn } => {
            let v = conn.call(Method::GET, "/api/v1/policy", None).await?;
            let p: PolicyInfo = serde_json::from_value(v)?;
            print!("{}", p.text);
            if !p.text.ends_with('\n') {
                println!();
            }
        }
        PolicySub::Check { file, local, conn } => {
            let text = read(&file)?;
            let tests = if local {
                weft_policy::check(&text, &weft_policy::Snapshot::default())
                    .map_err(|e| match e {
                        weft_policy::CheckError::Invalid(e) => anyhow::anyhow!(
                            "policy error at line {}, column {}: {}",
                            e.line(),
                            e.column(),
                            e.reason
                        ),
                        other => anyhow::anyhow!("{other}"),
                    })?
                    .tests()
                    .len()
            } else {
                let v = conn
                    .call(
                        Method::POST,
                        "/api/v1/policy/check",
                        Some(json!({ "text": text })),
                    )
                    .await?;
                serde_json::from_value::<PolicyInfo>(v)?.tests
            };
            println!("policy ok ({tests} tests passed)");
        }
        PolicySub::History { json, conn } => {
            let v = conn
                .call(Method::GET, "/api/v1/policy/history", None)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let list: Vec<PolicyInfo> = serde_json::from_value(v)?;
            if list.is_empty() {
                println!("no policy set: the tailnet allows all traffic");
            }
            for p in list {
                println!("{}  {}  {}  {} tests", p.id, p.created, p.author, p.tests);
            }
        }
    }
    Ok(())
}
