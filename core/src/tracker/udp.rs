//! UDP trackers (BEP 15).
