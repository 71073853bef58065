//! Criterion micro-benchmarks of the tunnel decision path: grant verification (claims and binding
//! of a remembered grant; signature too at a grant's first use), and the customer's Cedar `connect` decision with 1,000 customers loaded and 1, 20 or
//! 100 policies each, the request built with the typed API. `bench/run` runs them; by hand:
//! `cargo bench -p sallyport-bench --features micro`.
// A benchmark has nowhere to report a broken fixture but a panic.
#![expect(
    clippy::expect_used,
    reason = "a benchmark fails loudly on anything unexpected"
)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sallyport_bench::decisions::Fixture;

fn customers() -> usize {
    std::env::var("SALLYPORT_BENCH_CUSTOMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn grant(c: &mut Criterion) {
    let f = Fixture::new(customers(), 1).expect("fixture");
    let mut i = 0;
    c.bench_function("grant/verify", |b| {
        b.iter(|| {
            i += 1;
            assert!(f.verify(black_box(i)));
        })
    });
    c.bench_function("grant/verify-first-use", |b| {
        b.iter(|| {
            i += 1;
            assert!(f.verify_first_use(black_box(i)));
        })
    });
}

fn policy(c: &mut Criterion) {
    let n = customers();
    let mut group = c.benchmark_group("policy/decide");
    for policies in [1usize, 20, 100] {
        let f = Fixture::new(n, policies).expect("fixture");
        let mut i = 0;
        group.bench_with_input(BenchmarkId::from_parameter(policies), &policies, |b, _| {
            b.iter(|| {
                i += 1;
                assert!(f.decide(black_box(i)));
            })
        });
    }
    group.finish();
}

fn both(c: &mut Criterion) {
    let f = Fixture::new(customers(), 20).expect("fixture");
    let mut i = 0;
    c.bench_function("grant+policy/20", |b| {
        b.iter(|| {
            i += 1;
            assert!(f.verify(black_box(i)) && f.decide(black_box(i)));
        })
    });
    c.bench_function("grant-first-use+policy/20", |b| {
        b.iter(|| {
            i += 1;
            assert!(f.verify_first_use(black_box(i)) && f.decide(black_box(i)));
        })
    });
}

criterion_group!(benches, grant, policy, both);
criterion_main!(benches);
