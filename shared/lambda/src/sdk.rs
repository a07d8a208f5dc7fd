//! The AWS SDK's settings loader every binary of the project uses.
//!
//! The instance-metadata service (169.254.169.254) is asked for nothing unless the process runs
//! in AWS (Lambda: `AWS_LAMBDA_FUNCTION_NAME`, a container: `AWS_CONTAINER_CREDENTIALS_*`) or is
//! told to (`LLMO_ALLOW_IMDS=1`, for the local modes on an EC2 instance): elsewhere a process
//! without region or credentials fails on its first request instead of probing an address off
//! this machine (the SDK's default chain ends with that probe).

use aws_config::BehaviorVersion;

/// Whether this process may ask the instance-metadata service for region and credentials.
pub fn imds_allowed() -> bool {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    set("AWS_LAMBDA_FUNCTION_NAME")
        || set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        || set("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        || std::env::var("LLMO_ALLOW_IMDS").is_ok_and(|v| v == "1")
}

/// The SDK's settings loader: its default chains in AWS; elsewhere the same chains without
/// the instance-metadata providers (environment, then profile files).
pub fn loader() -> aws_config::ConfigLoader {
    let loader = aws_config::defaults(BehaviorVersion::latest());
    if imds_allowed() {
        return loader;
    }
    use aws_config::meta::credentials::CredentialsProviderChain;
    use aws_config::meta::region::RegionProviderChain;
    let credentials = CredentialsProviderChain::first_try(
        "Environment",
        aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
    )
    .or_else("Profile", aws_config::profile::ProfileFileCredentialsProvider::builder().build());
    let region = RegionProviderChain::first_try(aws_config::environment::EnvironmentVariableRegionProvider::new())
        .or_else(aws_config::profile::ProfileFileRegionProvider::new());
    loader.credentials_provider(credentials).region(region)
}
