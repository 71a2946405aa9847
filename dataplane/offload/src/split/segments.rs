//! [`Segments`]: the caller-owned, reused output of [`super::split`].

use crate::OffloadError;

/// Packets produced by one [`super::split`] call, laid out in one buffer that is
/// allocated once (by [`Segments::with_capacity`]) and reused for every read.
///
/// Each segment has `headroom` free bytes before it and `tailroom` after it, so
/// the caller can write the WireGuard data header in front and the padding and
/// AEAD tag behind, and seal in place ([`Segments::get_with_room_mut`]). The
/// room bytes are left as they were: the caller writes all of them.
#[derive(Debug, Clone)]
pub struct Segments {
    buf: Vec<u8>,
    /// (offset of the segment in `buf`, segment length)
    spans: Vec<(usize, usize)>,
    max_segments: usize,
    headroom: usize,
    tailroom: usize,
    used: usize,
}

impl Segments {
    /// An empty set with room for `bytes` bytes (segments plus their headroom
    /// and tailroom) and at most `max_segments` segments.
    pub fn with_capacity(bytes: usize, max_segments: usize) -> Self {
        Self {
            buf: vec![0; bytes],
            spans: Vec::with_capacity(max_segments),
            max_segments,
            headroom: 0,
            tailroom: 0,
            used: 0,
        }
    }

    /// Forgets all segments (keeps the buffer).
    pub fn clear(&mut self) {
        self.spans.clear();
        self.used = 0;
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are no segments.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Bytes of buffer (segments plus room) this set can hold.
    pub fn capacity_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Segments this set can hold.
    pub fn max_segments(&self) -> usize {
        self.max_segments
    }

    /// Free bytes before each segment, as given to the last `split`.
    pub fn headroom(&self) -> usize {
        self.headroom
    }

    /// Free bytes after each segment, as given to the last `split`.
    pub fn tailroom(&self) -> usize {
        self.tailroom
    }

    /// Segment `i` (an IP packet).
    ///
    /// # Panics
    /// If `i >= self.len()`, like slice indexing.
    pub fn get(&self, i: usize) -> &[u8] {
        let (at, len) = self.spans[i];
        &self.buf[at..at + len]
    }

    /// Segment `i`, mutable.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn get_mut(&mut self, i: usize) -> &mut [u8] {
        let (at, len) = self.spans[i];
        &mut self.buf[at..at + len]
    }

    /// Segment `i` with its room: `headroom` bytes, the segment, `tailroom`
    /// bytes; and the segment's length.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn get_with_room_mut(&mut self, i: usize) -> (&mut [u8], usize) {
        let (at, len) = self.spans[i];
        (
            &mut self.buf[at - self.headroom..at + len + self.tailroom],
            len,
        )
    }

    /// The segments in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.spans.iter().map(|&(at, len)| &self.buf[at..at + len])
    }

    /// Empties the set and sets the room for the segments to come.
    pub(crate) fn reset(&mut self, headroom: usize, tailroom: usize) {
        self.clear();
        self.headroom = headroom;
        self.tailroom = tailroom;
    }

    /// Checks that `count` segments totalling `bytes` (without room) fit.
    pub(crate) fn check_fits(&self, count: usize, bytes: usize) -> Result<(), OffloadError> {
        if count > self.max_segments {
            return Err(OffloadError::TooManySegments {
                needed: count,
                capacity: self.max_segments,
            });
        }
        let room = self.headroom.saturating_add(self.tailroom);
        let needed = room.saturating_mul(count).saturating_add(bytes);
        if needed > self.buf.len() {
            return Err(OffloadError::SegmentBufferFull {
                needed,
                capacity: self.buf.len(),
            });
        }
        Ok(())
    }

    /// Appends a segment of `len` bytes and returns it for the caller to fill.
    pub(crate) fn push(&mut self, len: usize) -> Result<&mut [u8], OffloadError> {
        let at = self.used.saturating_add(self.headroom);
        let end = at.saturating_add(len).saturating_add(self.tailroom);
        if self.spans.len() >= self.max_segments {
            let needed = self.spans.len() + 1;
            return Err(OffloadError::TooManySegments {
                needed,
                capacity: self.max_segments,
            });
        }
        if end > self.buf.len() {
            return Err(OffloadError::SegmentBufferFull {
                needed: end,
                capacity: self.buf.len(),
            });
        }
        self.spans.push((at, len));
        self.used = end;
        Ok(&mut self.buf[at..at + len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_surrounds_each_segment() {
        let mut s = Segments::with_capacity(100, 4);
        s.reset(16, 8);
        s.push(3).unwrap().copy_from_slice(b"abc");
        s.push(2).unwrap().copy_from_slice(b"de");
        assert_eq!(s.iter().collect::<Vec<_>>(), [&b"abc"[..], b"de"]);
        let (room, len) = s.get_with_room_mut(1);
        assert_eq!((room.len(), len), (16 + 2 + 8, 2));
        assert_eq!(&room[16..18], b"de");
        s.get_mut(0)[0] = b'x';
        assert_eq!(s.get(0), b"xbc");
        // 2 * (16 + 8) + 5 = 53 bytes used; a 52-byte segment (+24 room) does not fit.
        let err = s.push(52).unwrap_err();
        assert_eq!(
            err,
            OffloadError::SegmentBufferFull {
                needed: 53 + 24 + 52,
                capacity: 100
            }
        );
        s.clear();
        assert!(s.is_empty());
    }

    #[test]
    fn segment_limit_is_enforced() {
        let mut s = Segments::with_capacity(100, 1);
        s.push(1).unwrap();
        assert_eq!(
            s.push(1).unwrap_err(),
            OffloadError::TooManySegments {
                needed: 2,
                capacity: 1
            }
        );
        assert_eq!(
            s.check_fits(2, 2).unwrap_err(),
            OffloadError::TooManySegments {
                needed: 2,
                capacity: 1
            }
        );
        assert_eq!(
            s.check_fits(1, 101).unwrap_err(),
            OffloadError::SegmentBufferFull {
                needed: 101,
                capacity: 100
            }
        );
    }
}
