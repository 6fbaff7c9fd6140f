//! Criterion benches for response compression on `compress = true` routes
//! (issue 17): the cost per KiB of each encoder the gateway uses
//! (`gateway::proxy::edge::encoder`: Pingora's gzip and zstd, our
//! finishing brotli) at the gateway's levels, on a JSON body of
//! 1, 16 and 128 KiB streamed in 16 KiB chunks as the proxy sees it.
//! Throughput is reported in bytes, so criterion prints KiB/s; the cost
//! per KiB is its inverse. The compressed size of each is printed once.
//!
//! `cargo bench --bench compression` runs them; `cargo test --bench
//! compression` runs each once in debug, only to prove they still work.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gateway::proxy::edge::{encoder, Encoding};

/// A JSON list of orders: the repetitive text an API answers with.
fn json_body(len: usize) -> Vec<u8> {
    let mut out = b"[".to_vec();
    let mut i = 0u64;
    while out.len() < len {
        let item = format!(
            "{{\"id\":{i},\"customer\":\"c-{}\",\"status\":\"{}\",\"total_cents\":{},\"items\":[{{\"sku\":\"sku-{}\",\"qty\":{}}}]}},",
            i * 7919 % 1000,
            ["open", "paid", "shipped"][(i % 3) as usize],
            (i * 1013) % 100_000,
            i % 97,
            i % 5 + 1
        );
        out.extend_from_slice(item.as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// Encodes `chunks` as one response with a fresh encoder; returns the
/// compressed length.
fn encode(e: Encoding, chunks: &[Bytes]) -> usize {
    let Some(mut enc) = encoder(e) else {
        return 0;
    };
    let mut out = 0;
    let last = chunks.len().saturating_sub(1);
    for (i, c) in chunks.iter().enumerate() {
        out += enc.encode(c, i == last).map_or(0, |b| b.len());
    }
    out
}

fn compression(c: &mut Criterion) {
    let mut group = c.benchmark_group("compress");
    for kib in [1usize, 16, 128] {
        let body = json_body(kib * 1024);
        let chunks: Vec<Bytes> = body.chunks(16 * 1024).map(Bytes::copy_from_slice).collect();
        group.throughput(Throughput::Bytes(body.len() as u64));
        for e in [Encoding::Gzip, Encoding::Brotli, Encoding::Zstd] {
            println!(
                "{} level {} on {kib} KiB: {} bytes",
                e.token(),
                e.level(),
                encode(e, &chunks)
            );
            group.bench_with_input(
                BenchmarkId::new(e.token(), format!("{kib}KiB")),
                &chunks,
                |b, chunks| b.iter(|| encode(e, black_box(chunks))),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, compression);
criterion_main!(benches);
