use lb::dataplane::{Dataplane, LoadOptions};
#[test]
fn loads() {
    let mut dp = Dataplane::load(&LoadOptions::default()).expect("load");
    dp.program("lb_balancer").expect("verifier");
}
