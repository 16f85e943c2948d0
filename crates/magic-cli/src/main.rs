//! `magic`: the Magic Runtime command line.

fn main() {}
