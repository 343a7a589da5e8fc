//! A raw driver's attested session, as the adversarial and audit tests drive it: queue 0
//! made ready, the transcript the device should observe, emulated evidence over it, and the
//! evidence submitted through the attestation mailbox.

use swiotlb_attest::emulated::{ReportOptions, Signer};
use swiotlb_guest::testing::raw_driver::RawDriver;
use swiotlb_shared::pci::{attest_mailbox as mb, cfg};
use swiotlb_shared::transcript::{
    DeviceIdentity, InstanceId, PlatformKind, QueueRings, Transcript,
};

/// Size of queue 0 in these sessions.
pub const QSIZE: u16 = 64;

/// A 32-bit attestation mailbox register.
pub fn mailbox_u32(d: &mut RawDriver, off: u64) -> u32 {
    let mut b = [0u8; 4];
    d.transport().mailbox_read(off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

/// Sets up queue 0 ([`QSIZE`]) and DRIVER_OK; returns the rings' bus addresses.
pub fn ready(d: &mut RawDriver) -> (u64, u64, u64) {
    let (r, ok) = d.setup_standard_queue(QSIZE).unwrap();
    assert!(ok, "queue 0 enabled");
    d.driver_ok().unwrap();
    (d.bus(r.desc), d.bus(r.avail), d.bus(r.used))
}

/// The transcript a raw driver's session would produce, as the device should see it, with
/// `features` as the driver's and the rings at `rings_bus`.
pub fn transcript_of(d: &mut RawDriver, features: u64, rings_bus: (u64, u64, u64)) -> Transcript {
    let mut nonce = [0u8; 32];
    d.transport().mailbox_read(mb::NONCE, &mut nonce).unwrap();
    let mut inst = [0u8; 16];
    d.transport()
        .mailbox_read(mb::INSTANCE_ID, &mut inst)
        .unwrap();
    let mut ids = [0u8; 4];
    let mut sub = [0u8; 4];
    d.config_read(cfg::VENDOR_ID, &mut ids).unwrap();
    d.config_read(cfg::SUBSYSTEM_VENDOR_ID, &mut sub).unwrap();
    let offered = d.transport().device_features().unwrap();
    Transcript {
        platform: PlatformKind::Emulated,
        nonce,
        identity: DeviceIdentity {
            vendor_id: u16::from_le_bytes([ids[0], ids[1]]),
            device_id: u16::from_le_bytes([ids[2], ids[3]]),
            subsystem_vendor_id: u16::from_le_bytes([sub[0], sub[1]]),
            subsystem_id: u16::from_le_bytes([sub[2], sub[3]]),
            instance_id: InstanceId::Short(inst),
        },
        device_features: offered,
        driver_features: features,
        pool_base: d.pool_base(),
        pool_size: d.pool_size(),
        queues: vec![QueueRings {
            index: 0,
            desc: rings_bus.0,
            avail: rings_bus.1,
            used: rings_bus.2,
            size: QSIZE,
        }],
    }
}

/// Places `evidence` in the pool's scratch area, rings the mailbox, returns the gate state.
pub fn submit(d: &mut RawDriver, evidence: &[u8]) -> u32 {
    let off = d.scratch_area() + 64 * 1024;
    d.pool().write(off, evidence).unwrap();
    let bus = d.bus(off);
    submit_at(d, bus, evidence.len() as u32)
}

/// Names `len` bytes of evidence at bus address `bus`, rings the mailbox, returns the gate
/// state.
pub fn submit_at(d: &mut RawDriver, bus: u64, len: u32) -> u32 {
    let t = d.transport();
    t.mailbox_write(mb::EVIDENCE_ADDR, &bus.to_le_bytes())
        .unwrap();
    t.mailbox_write(mb::EVIDENCE_LEN, &len.to_le_bytes())
        .unwrap();
    t.mailbox_write(mb::DOORBELL, &mb::SUBMIT.to_le_bytes())
        .unwrap();
    mailbox_u32(d, mb::STATE)
}

/// Emulated evidence over `t`'s REPORT_DATA, signed by `signer`.
pub fn sign(signer: &Signer, t: &Transcript) -> Vec<u8> {
    signer
        .sign_report(
            &t.report_data().unwrap(),
            &[0; 48],
            &ReportOptions::default(),
        )
        .unwrap()
        .encode()
        .unwrap()
}

/// A fresh emulated attestation root in `dir`: its private key (`emulated-ark.pk8`), its
/// public key (`emulated-ark.pub`, for `swiotlb-host --emulated-ark`) and a signer with it.
pub fn emulated_ark(dir: &std::path::Path) -> (Signer, std::path::PathBuf, std::path::PathBuf) {
    let pk8 = Signer::generate_ark_pkcs8().unwrap();
    let key = dir.join("emulated-ark.pk8");
    std::fs::write(&key, &pk8).unwrap();
    let pubfile = dir.join("emulated-ark.pub");
    std::fs::write(&pubfile, Signer::public_key_of(&pk8).unwrap()).unwrap();
    (Signer::from_pkcs8(&pk8).unwrap(), key, pubfile)
}
