//! Counting gRPC messages in a body as it streams: each message is a five-byte prefix (a
//! compressed flag and a big-endian length) and that many bytes, split across data frames
//! in any way.

/// Where the counter is within the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The next byte is a message's compressed flag.
    Flag,
    /// `got` of the four length bytes read so far, accumulated in `len`.
    Length { got: u8, len: u32 },
    /// This many bytes of the current message are still to come.
    Payload(u32),
}

/// A running count of the gRPC messages seen in a stream of data frames. A message counts
/// when its first byte arrives (as Envoy's frame inspector counts), so a message cut off by
/// a reset still counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcMessages {
    state: State,
    count: u64,
}

impl Default for GrpcMessages {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcMessages {
    /// A stream with nothing seen yet.
    pub const fn new() -> Self {
        Self {
            state: State::Flag,
            count: 0,
        }
    }

    /// Messages begun so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Reads one data frame.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Flag => {
                    self.count = self.count.saturating_add(1);
                    self.state = State::Length { got: 0, len: 0 };
                    data = &data[1..];
                }
                State::Length { got, len } => {
                    let len = (len << 8) | u32::from(data[0]);
                    data = &data[1..];
                    self.state = match got + 1 {
                        4 if len == 0 => State::Flag,
                        4 => State::Payload(len),
                        got => State::Length { got, len },
                    };
                }
                State::Payload(remaining) => {
                    // `take` fits in u32: it is at most `remaining`.
                    let take = data.len().min(remaining as usize);
                    data = &data[take..];
                    let left = remaining - take as u32;
                    self.state = if left == 0 {
                        State::Flag
                    } else {
                        State::Payload(left)
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    #[test]
    fn counts_messages_however_the_frames_split_them() {
        let mut stream = Vec::new();
        for len in [0, 1, 5, 300, 0, 70_000] {
            stream.extend(message(len));
        }
        for chunk in [1, 2, 3, 4, 5, 6, 7, 64, 1000, stream.len()] {
            let mut c = GrpcMessages::new();
            for frame in stream.chunks(chunk) {
                c.feed(frame);
            }
            assert_eq!(c.count(), 6, "chunks of {chunk}");
            assert_eq!(c.state, State::Flag, "chunks of {chunk}");
        }
    }

    #[test]
    fn a_message_counts_from_its_first_byte() {
        let mut c = GrpcMessages::new();
        c.feed(&message(10)[..3]);
        assert_eq!(c.count(), 1);
        c.feed(&[]);
        assert_eq!(c.count(), 1);
    }

    #[test]
    fn a_declared_length_near_u32_max_does_not_overflow() {
        let mut c = GrpcMessages::new();
        c.feed(&[1, 0xff, 0xff, 0xff, 0xff]);
        c.feed(&[0; 4096]);
        assert_eq!(c.state, State::Payload(u32::MAX - 4096));
        assert_eq!(c.count(), 1);
    }
}
