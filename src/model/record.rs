//! A record as the layers above the Kafka client see it: what is kept of
//! it for telemetry, for a dead letter, and where it sits in its log.

/// A record as read back.
#[derive(Debug, Clone)]
pub struct Raw {
    pub key: Option<Box<[u8]>>,
    pub value: Option<Box<[u8]>>,
    pub headers: Box<str>,
}

impl Raw {
    /// Bytes it holds, for the buffer's accounting.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Raw>()
            + self.key.as_ref().map_or(0, |k| k.len())
            + self.value.as_ref().map_or(0, |v| v.len())
            + self.headers.len()
    }
}

/// `(topic, partition, offset)`.
pub type Coordinates = (String, i32, i64);

/// A producer's W3C trace context (`traceparent` header), parsed at intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// Parses `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`
    /// (future versions may append fields). `None` for anything invalid,
    /// including the all-zero ids the spec forbids.
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        let value = value.trim_ascii();
        if value.len() < 55 || (value.len() > 55 && value[55] != b'-') {
            return None;
        }
        let version = hex::<1>(&value[0..2])?[0];
        if version == 0xff || (version == 0 && value.len() != 55) {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let trace_id = hex::<16>(&value[3..35])?;
        let span_id = hex::<8>(&value[36..52])?;
        let flags = hex::<1>(&value[53..55])?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }
}

/// Lowercase hex (the spec's only form) into `N` bytes.
fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// What flush telemetry needs of a record, taken at intake: its Kafka
/// timestamp (end-to-end latency) and producer trace context (span links).
#[derive(Debug, Default)]
pub struct RecordMeta {
    pub timestamp_ms: Option<i64>,
    pub trace: Option<Box<TraceParent>>,
}
