//! Client Characteristic Configuration descriptor (0x2902) values.
//!
//! Layout (Core Spec Vol 3 Part G §3.3.3.3): u16 LE, bit0 notifications, bit1 indications.
//! Enable indications for 0x2A35/0x2A9D/0x2A9C/0x2A1C/0x2A5E/0x2A52 and notifications for
//! 0x2A36/0x2A1E/0x2A5F/0x2A18/0x2A34/0x2A37 (gatt-profiles.md §2). Turn them off before a
//! disconnect on BlueZ (it remembers CCCD state, peripherals do not; §11 A&D).

/// What to write to a CCCD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cccd {
    Off,
    Notify,
    Indicate,
}

impl Cccd {
    /// The two octets to write: `00 00`, `01 00`, `02 00`.
    pub fn encode(self) -> [u8; 2] {
        match self {
            Self::Off => [0x00, 0x00],
            Self::Notify => [0x01, 0x00],
            Self::Indicate => [0x02, 0x00],
        }
    }

    /// Decodes a CCCD value read back (`None` for both bits set, RFU bits, or a wrong length).
    pub fn decode(value: &[u8]) -> Option<Self> {
        match value {
            [0x00, 0x00] => Some(Self::Off),
            [0x01, 0x00] => Some(Self::Notify),
            [0x02, 0x00] => Some(Self::Indicate),
            _ => None,
        }
    }
}
