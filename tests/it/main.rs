//! Integration tests: run the real `visutility` binary against temp directories.

mod support;

mod backtest;
mod check_config;
mod cli;
mod clock;
mod config;
mod conformance;
mod crash;
mod damage;
mod detectors;
mod detectors_binary;
mod explain;
mod faults;
mod fleet;
mod golden;
mod hooks;
mod hostile;
mod jobs;
mod memory;
mod new_user;
mod operator;
mod persistence;
mod powerfs;
mod powerfs_selftest;
mod powerloss;
mod protocol;
mod replay;
mod report;
mod security_dos;
mod security_files;
mod security_peers;
mod signals;
mod supervision;
mod systemd;
mod upgrade;
