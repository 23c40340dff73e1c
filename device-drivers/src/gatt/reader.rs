//! A bounds-checked little-endian cursor over a characteristic value.
//!
//! Every read checks the length first and fails with [`GattError::Truncated`] naming how many
//! octets the announced layout needs; nothing here indexes a slice directly.

use super::datetime::DateTime;
use super::sfloat::Float11073;
use super::GattError;

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Fails unless `n` more octets are available.
    pub(crate) fn need(&self, n: usize) -> Result<(), GattError> {
        let needed = self.pos.saturating_add(n);
        if needed > self.buf.len() {
            Err(GattError::Truncated {
                needed,
                got: self.buf.len(),
            })
        } else {
            Ok(())
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], GattError> {
        self.need(n)?;
        let end = self.pos + n;
        let s = self.buf.get(self.pos..end).ok_or(GattError::Truncated {
            needed: end,
            got: self.buf.len(),
        })?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GattError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, GattError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn i8(&mut self) -> Result<i8, GattError> {
        Ok(i8::from_le_bytes(self.array::<1>()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, GattError> {
        Ok(u16::from_le_bytes(self.array::<2>()?))
    }

    pub(crate) fn u16_be(&mut self) -> Result<u16, GattError> {
        Ok(u16::from_be_bytes(self.array::<2>()?))
    }

    pub(crate) fn i16(&mut self) -> Result<i16, GattError> {
        Ok(i16::from_le_bytes(self.array::<2>()?))
    }

    pub(crate) fn u24(&mut self) -> Result<u32, GattError> {
        let [a, b, c] = self.array::<3>()?;
        Ok(u32::from_le_bytes([a, b, c, 0]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, GattError> {
        Ok(u32::from_le_bytes(self.array::<4>()?))
    }

    pub(crate) fn sfloat(&mut self) -> Result<Float11073, GattError> {
        Ok(Float11073::from_sfloat(self.u16()?))
    }

    pub(crate) fn float(&mut self) -> Result<Float11073, GattError> {
        Ok(Float11073::from_float(self.u32()?))
    }

    pub(crate) fn date_time(&mut self) -> Result<DateTime, GattError> {
        let b = self.array::<7>()?;
        Ok(DateTime::from_bytes(b))
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
}
