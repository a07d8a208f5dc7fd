//! Creates the table, step queue (with its dead-letter queue) and bucket on the local stack,
//! under the names the functions use by default (`LLMO_TABLE`, ... override them), and prints
//! the variables that point the functions at them. `LLMO_QUEUE` names the step queue (its
//! dead-letter queue is `<name>-dead`).
//!
//!   cargo run --release -p llmo-aws --example provision
use llmo_aws::provision::{Resources, provision};

#[tokio::main]
async fn main() {
    let aws = llmo_aws::Aws::from_env().await.expect("AWS settings");
    let mut r = Resources { table: aws.table.clone(), bucket: aws.bucket.clone(), ..Resources::default() };
    if let Some(q) = std::env::var("LLMO_QUEUE").ok().filter(|q| !q.is_empty()) {
        r.dlq = format!("{q}-dead");
        r.queue = q;
    }
    match provision(&aws, &r).await {
        Ok(a) => {
            for (k, v) in a.resource_env() {
                println!("{k}={v}");
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
