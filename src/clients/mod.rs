//! The outside world's wire formats: one module per service, the only code
//! that knows its paths, field names and quirks.

pub mod io_thread;
pub mod razorpay;
pub mod shiprocket;
