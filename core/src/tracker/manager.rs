//! The BEP 12 multi-tracker announce cycle.
