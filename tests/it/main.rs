//! Integration tests: run the real `visutility` binary against temp directories.

mod support;

mod cli;
mod config;
mod conformance;
mod detectors;
mod detectors_binary;
mod faults;
mod hooks;
mod persistence;
mod protocol;
mod signals;
mod supervision;
