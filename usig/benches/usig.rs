//! Measurements behind the USIG's implementation choices (README.md has the figures):
//! ECDSA P-256 sign and verify through ring, aws-lc-rs and the RustCrypto p256 crate,
//! side by side in one run; the backends' create_ui end to end; and the durable write
//! alone, in place (what SoftwareUsig does) against write-temp-and-rename.
//!
//! The durable benchmarks write under the system temp directory (TMPDIR); point it at
//! the disk the replicas use.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, black_box, criterion_group, criterion_main};
use usig::{MemoryUsig, SigningKey, SoftwareUsig, Usig, Verifier, certified_bytes, verify_ui};

fn message() -> [u8; 60] {
    certified_bytes(1, 42, &[7; 32])
}

fn bench_sign(c: &mut Criterion) {
    let message = message();
    let mut group = c.benchmark_group("ecdsa_p256_sign");

    {
        use ring::rand::SystemRandom;
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        group.bench_function("ring", |b| {
            b.iter(|| key.sign(&rng, black_box(&message)).unwrap())
        });
    }
    {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        group.bench_function("aws-lc-rs", |b| {
            b.iter(|| key.sign(&rng, black_box(&message)).unwrap())
        });
    }
    {
        use p256::ecdsa::signature::Signer;
        use p256::ecdsa::{Signature, SigningKey};
        let key = SigningKey::from_slice(&[0x5A; 32]).unwrap();
        group.bench_function("p256", |b| {
            b.iter(|| -> Signature { key.sign(black_box(&message)) })
        });
    }
    group.finish();
}

fn bench_verify(c: &mut Criterion) {
    let message = message();
    let mut group = c.benchmark_group("ecdsa_p256_verify");

    {
        use ring::rand::SystemRandom;
        use ring::signature::{
            ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
            UnparsedPublicKey,
        };
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let signature = key.sign(&rng, &message).unwrap();
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.public_key().as_ref());
        group.bench_function("ring", |b| {
            b.iter(|| {
                public
                    .verify(black_box(&message), signature.as_ref())
                    .unwrap()
            })
        });
    }
    {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{
            ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
            ParsedPublicKey, UnparsedPublicKey,
        };
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let signature = key.sign(&rng, &message).unwrap();
        let unparsed =
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.public_key().as_ref().to_vec());
        let parsed = ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.public_key()).unwrap();
        group.bench_function("aws-lc-rs unparsed", |b| {
            b.iter(|| {
                unparsed
                    .verify(black_box(&message), signature.as_ref())
                    .unwrap()
            })
        });
        group.bench_function("aws-lc-rs parsed", |b| {
            b.iter(|| {
                parsed
                    .verify_sig(black_box(&message), signature.as_ref())
                    .unwrap()
            })
        });
    }
    {
        use p256::ecdsa::signature::{Signer, Verifier};
        use p256::ecdsa::{Signature, SigningKey};
        let key = SigningKey::from_slice(&[0x5A; 32]).unwrap();
        let signature: Signature = key.sign(&message);
        let public = *key.verifying_key();
        group.bench_function("p256", |b| {
            b.iter(|| public.verify(black_box(&message), &signature).unwrap())
        });
    }
    {
        let key = SigningKey::generate().unwrap();
        let mut usig = MemoryUsig::new(1, key.key_bytes()).unwrap();
        let digest = [7; 32];
        let ui = usig.create_ui(&digest).unwrap();
        let identity = usig.identity();
        let verifier = Verifier::new(&identity).unwrap();
        group.bench_function("usig Verifier::verify", |b| {
            b.iter(|| verifier.verify(1, black_box(&digest), &ui).unwrap())
        });
        group.bench_function("usig verify_ui", |b| {
            b.iter(|| verify_ui(&identity, 1, black_box(&digest), &ui).unwrap())
        });
    }
    group.finish();
}

fn bench_create_ui(c: &mut Criterion) {
    let mut group = c.benchmark_group("usig_create_ui");
    let key = SigningKey::generate().unwrap();
    let digest = [3; 32];

    let mut memory = MemoryUsig::new(1, key.key_bytes()).unwrap();
    group.bench_function("memory", |b| {
        b.iter(|| memory.create_ui(black_box(&digest)).unwrap())
    });

    let dir = tempfile::tempdir().unwrap();
    let mut software = SoftwareUsig::open(dir.path(), 1, key.key_bytes()).unwrap();
    group.bench_function("software (durable)", |b| {
        b.iter(|| software.create_ui(black_box(&digest)).unwrap())
    });
    drop(software);

    group.bench_function("software open (restart)", |b| {
        b.iter(|| SoftwareUsig::open(dir.path(), 1, key.key_bytes()).unwrap())
    });
    group.finish();
}

/// The TPM backend on swtpm (feature `tpm`, swtpm installed; otherwise a no-op):
/// create_ui end to end (five TPM commands plus the last-UI cache write), on the raw
/// TCTI path and through ESYS side by side, and the
/// verification of a TPM UI (attest parse, audit digest rebuild, ECDSA).
fn bench_tpm(c: &mut Criterion) {
    #[cfg(feature = "tpm")]
    {
        if !usig::swtpm::available() {
            eprintln!("swtpm not installed: skipping the TPM benchmarks");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let swtpm = usig::swtpm::Swtpm::start(&dir.path().join("swtpm")).unwrap();
        let location = usig::TpmLocation::new(swtpm.tcti());
        let identity = usig::tpm::provision(&location).unwrap();
        let state = dir.path().join("state");
        fs::create_dir_all(&state).unwrap();
        let mut tpm = usig::TpmUsig::open(&location, 1, &identity, &state).unwrap();
        let digest = [3; 32];
        let ui = tpm.create_ui(&digest).unwrap();
        let mut group = c.benchmark_group("usig_tpm");
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(10));
        group.bench_function("create_ui (swtpm)", |b| {
            b.iter(|| tpm.create_ui(black_box(&digest)).unwrap())
        });
        // The same UI with every command through tpm2-tss's ESYS, as before the raw path.
        group.bench_function("create_ui through ESYS (swtpm)", |b| {
            b.iter(|| tpm.create_ui_through_esys(black_box(&digest)).unwrap())
        });
        group.finish();
        let verifier = Verifier::new(&identity).unwrap();
        let mut group = c.benchmark_group("usig_verify_ui");
        group.bench_function("tpm Verifier::verify", |b| {
            b.iter(|| verifier.verify(1, black_box(&digest), &ui).unwrap())
        });
        group.finish();
        drop(tpm);
        drop(swtpm);
    }
    #[cfg(not(feature = "tpm"))]
    let _ = c;
}

/// The durable write alone: the same syscalls SoftwareUsig makes (one 512-byte block in
/// place in a preallocated file, fdatasync) against the classic atomic replace.
fn bench_durable_write(c: &mut Criterion) {
    let mut group = c.benchmark_group("durable_counter_write");
    let dir = tempfile::tempdir().unwrap();
    let block = [0xA5u8; 512];

    let path = dir.path().join("slots");
    let mut file = File::create(&path).unwrap();
    file.write_all(&[0u8; 1536]).unwrap();
    file.sync_all().unwrap();
    let mut counter = 0u64;
    group.bench_function(BenchmarkId::new("pwrite+fdatasync", "512B in place"), |b| {
        b.iter(|| {
            counter += 1;
            let offset = 512 * (1 + counter % 2);
            file.write_all_at(&block, offset).unwrap();
            file.sync_data().unwrap();
        })
    });

    let target = dir.path().join("state");
    let temp = dir.path().join("state.tmp");
    group.bench_function(
        BenchmarkId::new("write+fsync+rename+fsync(dir)", "512B"),
        |b| {
            b.iter(|| {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&temp)
                    .unwrap();
                f.write_all(&block).unwrap();
                f.sync_all().unwrap();
                fs::rename(&temp, &target).unwrap();
                File::open(dir.path()).unwrap().sync_all().unwrap();
            })
        },
    );
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(40)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_sign, bench_verify, bench_create_ui, bench_durable_write, bench_tpm
}
criterion_main!(benches);
