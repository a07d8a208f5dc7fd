//! Request accounting: what each step costs in AWS requests and DynamoDB capacity.
//!
//! Every SDK client carries a [`CountRequests`] interceptor that counts the HTTP requests it
//! transmits (retries included: AWS bills each). DynamoDB capacity comes from
//! `ReturnConsumedCapacity` on every call; a conditional write that loses its race returns an
//! error without capacity, yet AWS bills it, so the store charges it by the item's size.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use serde::Serialize;

/// Counters shared by the clients of one process. Capacity units are kept in thousandths.
#[derive(Debug, Default)]
pub struct Meter {
    pub sqs: AtomicU64,
    pub dynamodb: AtomicU64,
    pub s3: AtomicU64,
    /// EventBridge Scheduler requests (one-shots for delays past 15 minutes).
    pub scheduler: AtomicU64,
    wru_milli: AtomicU64,
    rru_milli: AtomicU64,
    /// Conditional writes that lost (billed, changed nothing).
    pub lost_writes: AtomicU64,
    /// Conditional writes of a run's log (appends), won or lost.
    pub log_writes: AtomicU64,
}

/// A reading of a [`Meter`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Reading {
    pub sqs_requests: u64,
    pub dynamodb_requests: u64,
    pub s3_requests: u64,
    pub wru: f64,
    pub rru: f64,
    pub lost_writes: u64,
    pub log_writes: u64,
}

impl Meter {
    pub fn add_wru(&self, units: f64) {
        self.wru_milli.fetch_add((units * 1000.0).round() as u64, Ordering::Relaxed);
    }
    pub fn add_rru(&self, units: f64) {
        self.rru_milli.fetch_add((units * 1000.0).round() as u64, Ordering::Relaxed);
    }
    pub fn read(&self) -> Reading {
        Reading {
            sqs_requests: self.sqs.load(Ordering::Relaxed),
            dynamodb_requests: self.dynamodb.load(Ordering::Relaxed),
            s3_requests: self.s3.load(Ordering::Relaxed),
            wru: self.wru_milli.load(Ordering::Relaxed) as f64 / 1000.0,
            rru: self.rru_milli.load(Ordering::Relaxed) as f64 / 1000.0,
            lost_writes: self.lost_writes.load(Ordering::Relaxed),
            log_writes: self.log_writes.load(Ordering::Relaxed),
        }
    }
}

impl Reading {
    /// What happened between `earlier` and this reading.
    pub fn since(&self, earlier: &Reading) -> Reading {
        Reading {
            sqs_requests: self.sqs_requests - earlier.sqs_requests,
            dynamodb_requests: self.dynamodb_requests - earlier.dynamodb_requests,
            s3_requests: self.s3_requests - earlier.s3_requests,
            wru: self.wru - earlier.wru,
            rru: self.rru - earlier.rru,
            lost_writes: self.lost_writes - earlier.lost_writes,
            log_writes: self.log_writes - earlier.log_writes,
        }
    }
}

/// List prices (us-east-1, 2026) used for the cost per million steps.
pub mod price {
    pub const SQS_PER_REQUEST: f64 = 0.40 / 1e6;
    pub const DYNAMODB_PER_WRU: f64 = 0.625 / 1e6;
    pub const DYNAMODB_PER_RRU: f64 = 0.125 / 1e6;
    pub const S3_PER_PUT: f64 = 5.0 / 1e6;
    pub const LAMBDA_PER_REQUEST: f64 = 0.20 / 1e6;
    /// Lambda compute on Arm, per GB-second.
    pub const LAMBDA_PER_GB_SECOND: f64 = 0.0000133334;
    /// 20 ms at 128 MB on Arm.
    pub const LAMBDA_PER_INVOCATION_20MS_128MB: f64 = LAMBDA_PER_GB_SECOND * 0.125 * 0.020;
    pub const STEP_FUNCTIONS_STANDARD_PER_TRANSITION: f64 = 25.0 / 1e6;
}

/// Which counter an interceptor feeds.
#[derive(Debug, Clone, Copy)]
pub enum Service {
    Sqs,
    DynamoDb,
    S3,
    Scheduler,
}

/// When a request was transmitted (in its attempt's config bag).
#[derive(Debug, Clone)]
struct Sent(std::time::Instant);

impl Storable for Sent {
    type Storer = StoreReplace<Self>;
}

/// Counts the requests a client transmits, and times each until its response arrives
/// (`llmo_aws_call_seconds{service}`: what a handler spends waiting on AWS, apart from its own
/// time, which `llmo_api_request_seconds` and `llmo_step_seconds` include).
#[derive(Debug, Clone)]
pub struct CountRequests {
    pub meter: Arc<Meter>,
    pub service: Service,
}

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let c = match self.service {
            Service::Sqs => &self.meter.sqs,
            Service::DynamoDb => &self.meter.dynamodb,
            Service::S3 => &self.meter.s3,
            Service::Scheduler => &self.meter.scheduler,
        };
        c.fetch_add(1, Ordering::Relaxed);
        cfg.interceptor_state().store_put(Sent(std::time::Instant::now()));
        Ok(())
    }

    fn read_after_transmit(
        &self,
        _context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(Sent(t)) = cfg.load::<Sent>() {
            let service = match self.service {
                Service::Sqs => "sqs",
                Service::DynamoDb => "dynamodb",
                Service::S3 => "s3",
                Service::Scheduler => "scheduler",
            };
            metrics::histogram!("llmo_aws_call_seconds", "service" => service).record(t.elapsed().as_secs_f64());
        }
        Ok(())
    }
}
