//! `snapshot`: the case's normalised outcome is recorded (and compared with the reviewed
//! one in `snapshots/scenarios/`, or a `--outcomes` directory).

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{CaseCx, Operation, StepResult};

#[derive(Debug)]
pub struct Snapshot;

impl Operation for Snapshot {
    fn run<'a, 'e>(&'a self, cx: &'a mut CaseCx<'e>) -> BoxFuture<'a, StepResult> {
        async move {
            cx.snapshot = true;
            Ok(())
        }
        .boxed()
    }
}
