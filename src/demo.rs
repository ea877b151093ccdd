//! `breakwater demo`.
use crate::config::cli::DemoArgs;
use std::process::ExitCode;
pub fn main(_args: DemoArgs) -> ExitCode {
    ExitCode::SUCCESS
}
