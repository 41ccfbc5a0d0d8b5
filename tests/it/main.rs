//! Black-box tests of the daemon over real HTTP, one binary for all of them.

mod admin;
mod cli;
mod cluster;
mod cluster_processes;
mod console;
mod console_browser;
mod crash;
mod daemon_life;
mod demo;
mod gateway;
mod helpers;
mod operations;
mod orders;
mod passivation;
mod postgres;
mod postgres_orders;
mod postgres_records;
mod postgres_stock;
mod reconciliation;
mod sale_day;
mod shipping;
mod shipping_queue;
mod shiprocket;
mod stock;
mod storage_failure;
mod webhook;
