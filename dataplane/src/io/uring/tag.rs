//! What a submission was, packed into its `user_data`.

/// What a submission was, packed into its `user_data`: kind (8 bits), generation
/// (24 bits, UDP only), index (32 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tag {
    /// A read into TUN buffer `index`.
    Tun(u32),
    /// The multishot receive of socket `family`, armed in generation `gen`.
    Udp { family: usize, gen: u32 },
    /// A readiness poll of extra fd `index`.
    Poll(u32),
    /// A cancellation request (its completion carries nothing of interest).
    Cancel,
}

pub(super) const GEN_MASK: u32 = 0x00ff_ffff;

impl Tag {
    pub(super) fn encode(self) -> u64 {
        let (kind, gen, index) = match self {
            Tag::Tun(i) => (1u64, 0, i),
            Tag::Udp { family, gen } => (2, gen & GEN_MASK, family as u32),
            Tag::Poll(i) => (3, 0, i),
            Tag::Cancel => (4, 0, 0),
        };
        (kind << 56) | (u64::from(gen) << 32) | u64::from(index)
    }

    pub(super) fn decode(data: u64) -> Option<Tag> {
        let index = data as u32;
        let gen = (data >> 32) as u32 & GEN_MASK;
        match data >> 56 {
            1 => Some(Tag::Tun(index)),
            2 if index < 2 => Some(Tag::Udp {
                family: index as usize,
                gen,
            }),
            3 => Some(Tag::Poll(index)),
            4 => Some(Tag::Cancel),
            _ => None,
        }
    }
}
