//! The Harp checksum.

/// Low byte of the sum of `bytes`, as the `Checksum` field of a Harp message is defined.
///
/// Pass every byte of a message except the checksum itself.
///
/// ```
/// // A read request for register 0 (WHO_AM_I, U16) to the device port.
/// assert_eq!(twinrig_firmware::harp::checksum(&[0x01, 0x04, 0x00, 0xFF, 0x02]), 0x06);
/// ```
#[inline]
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b))
}

#[cfg(test)]
mod tests {
    use super::checksum;

    #[test]
    fn wraps_modulo_256() {
        assert_eq!(checksum(&[]), 0);
        assert_eq!(checksum(&[0xFF, 0x01]), 0);
        assert_eq!(checksum(&[0xFF; 5]), 0xFB);
    }
}
