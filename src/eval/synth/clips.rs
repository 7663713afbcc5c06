//! Synthetic referring-video clips for training and evaluating a small model: 2–4 shapes moving and
//! occluding each other over a textured background, with ground-truth masks and referring
//! expressions that single out exactly one object. Written in the Ref-YouTube-VOS layout, so
//! `referdino eval --dataset ref-youtube-vos --split SPLIT` and the trainer (`tools/train/`) read it.
//!
//! # Layout
//!
//! Under `ROOT` for split `SPLIT` (default `train`):
//!
//! * `SPLIT/JPEGImages/VIDEO/00000.jpg` … one JPEG per frame;
//! * `SPLIT/Annotations/VIDEO/00000.png` … palette PNG whose index is the object id (1..=n, 0 is the
//!   background); each pixel belongs to the visible (front-most) object, so occluded parts are absent
//!   from an object's mask;
//! * `meta_expressions/SPLIT/meta_expressions.json` — `{"videos": {VIDEO: {"frames": [...],
//!   "expressions": {"0": {"exp": "...", "obj_id": "2"}, ...}}}}`;
//! * `SPLIT/synth.json` — the generator's settings and every object's attributes (colour, shape,
//!   size, motion, mean centre, depth), for reading and checking only.
//!
//! # Objects
//!
//! Each clip has 2–4 objects drawn back to front in a random depth order. An object has a colour
//! (red, green, blue, yellow, white), a shape (circle, square, triangle), a size (big: half-extent
//! 0.17·min(W, H); small: 0.09·min(W, H)) and a motion (left, right, up, down: a straight path of
//! 0.35 of the frame's width or height over the clip; or still). Paths stay inside the frame. The
//! background is a muted checkerboard, stripe or blotch texture with pixel noise.
//!
//! # Expression grammar
//!
//! ```text
//! EXPR     := "the" [SIZE] [COLOUR] NOUN [MOTION] [POSITION]      (at least one of the brackets)
//! SIZE     := "big" | "small"
//! COLOUR   := "red" | "green" | "blue" | "yellow" | "white"
//! NOUN     := SHAPE | "object"                                    ("object" when no shape is named)
//! SHAPE    := "circle" | "ball" | "square" | "box" | "triangle"   (ball = circle, box = square)
//! MOTION   := "moving left" | "moving right" | "moving up" | "moving down" | "not moving"
//! POSITION := "on the left" | "on the right" | "at the top" | "at the bottom"
//! ```
//!
//! Meaning: size, colour, shape and motion are exact attributes; the candidates are the objects
//! having all of the named ones. POSITION compares the objects' mean centres over the clip. With one
//! candidate, its centre must lie in the named outer 40 % of the frame (x below 0.4·W for "on the
//! left", above 0.6·W for "on the right", likewise y for top and bottom). With several candidates,
//! the referent is the extreme one in that direction, and the next one must be at least 0.2·W (or
//! 0.2·H) behind it. An expression is written only when it refers to exactly one object (its
//! `obj_id`). Per object, up to `expressions_per_object` distinct expressions are drawn from all
//! the unambiguous ones: first a length (number of attributes) uniformly among the available
//! lengths, then an expression of that length, so short ("the red ball", "the object at the top")
//! and long ("the small blue square moving left") ones are equally common.
//!
//! # Held-out combinations
//!
//! [`HOLDOUT_PAIRS`] are colour × shape pairs (red triangle, green circle, blue square, yellow
//! square, white triangle). With [`Holdout::Exclude`] (for training sets) no object has one of these
//! pairs; with [`Holdout::Only`] (for a held-out evaluation set) every clip has at least one object
//! with a held-out pair, only such objects are targets, and each expression names both its colour
//! and its shape, so every expression contains a colour × shape combination never seen in training.
//! [`Holdout::None`] draws every pair.
//!
//! Everything is determined by the seed: the same [`ClipSpec`] writes the same files.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::output::png::write_palette_png;
use crate::{Error, Result};

/// An object colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Colour {
    /// Red.
    Red,
    /// Green.
    Green,
    /// Blue.
    Blue,
    /// Yellow.
    Yellow,
    /// White.
    White,
}

/// An object shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// A disc ("circle", "ball").
    Circle,
    /// An axis-aligned square ("square", "box").
    Square,
    /// An upward-pointing isosceles triangle.
    Triangle,
}

/// An object size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Size {
    /// Half-extent 0.17·min(W, H).
    Big,
    /// Half-extent 0.09·min(W, H).
    Small,
}

/// An object motion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Motion {
    /// Moving towards smaller x.
    Left,
    /// Moving towards larger x.
    Right,
    /// Moving towards smaller y.
    Up,
    /// Moving towards larger y.
    Down,
    /// Not moving.
    Still,
}

/// A position word: which side of the frame, or which extreme among the candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Position {
    /// "on the left".
    Left,
    /// "on the right".
    Right,
    /// "at the top".
    Top,
    /// "at the bottom".
    Bottom,
}

/// Every colour, in vocabulary order.
pub const COLOURS: [Colour; 5] = [
    Colour::Red,
    Colour::Green,
    Colour::Blue,
    Colour::Yellow,
    Colour::White,
];
/// Every shape.
pub const SHAPES: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];
/// Every motion.
pub const MOTIONS: [Motion; 5] = [
    Motion::Left,
    Motion::Right,
    Motion::Up,
    Motion::Down,
    Motion::Still,
];
/// Every position word.
pub const POSITIONS: [Position; 4] = [
    Position::Left,
    Position::Right,
    Position::Top,
    Position::Bottom,
];

/// Colour × shape pairs kept out of training sets ([`Holdout`]).
pub const HOLDOUT_PAIRS: [(Colour, Shape); 5] = [
    (Colour::Red, Shape::Triangle),
    (Colour::Green, Shape::Circle),
    (Colour::Blue, Shape::Square),
    (Colour::Yellow, Shape::Square),
    (Colour::White, Shape::Triangle),
];

impl Colour {
    /// The word.
    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::White => "white",
        }
    }

    fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 35, 35],
            Colour::Green => [35, 190, 55],
            Colour::Blue => [45, 75, 235],
            Colour::Yellow => [240, 215, 35],
            Colour::White => [245, 245, 245],
        }
    }
}

impl Shape {
    /// The words naming it (the first is the canonical one).
    pub fn words(self) -> &'static [&'static str] {
        match self {
            Shape::Circle => &["circle", "ball"],
            Shape::Square => &["square", "box"],
            Shape::Triangle => &["triangle"],
        }
    }
}

impl Size {
    /// The word.
    pub fn word(self) -> &'static str {
        match self {
            Size::Big => "big",
            Size::Small => "small",
        }
    }

    /// Half-extent as a fraction of min(W, H).
    pub fn half_extent(self) -> f32 {
        match self {
            Size::Big => 0.17,
            Size::Small => 0.09,
        }
    }
}

impl Motion {
    /// The words.
    pub fn words(self) -> &'static str {
        match self {
            Motion::Left => "moving left",
            Motion::Right => "moving right",
            Motion::Up => "moving up",
            Motion::Down => "moving down",
            Motion::Still => "not moving",
        }
    }

    /// Unit direction (x, y).
    fn dir(self) -> (f32, f32) {
        match self {
            Motion::Left => (-1.0, 0.0),
            Motion::Right => (1.0, 0.0),
            Motion::Up => (0.0, -1.0),
            Motion::Down => (0.0, 1.0),
            Motion::Still => (0.0, 0.0),
        }
    }
}

impl Position {
    /// The words.
    pub fn words(self) -> &'static str {
        match self {
            Position::Left => "on the left",
            Position::Right => "on the right",
            Position::Top => "at the top",
            Position::Bottom => "at the bottom",
        }
    }
}

/// Which colour × shape pairs a set may contain (module docs, "Held-out combinations").
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Holdout {
    /// Every pair.
    None,
    /// No object has a pair of [`HOLDOUT_PAIRS`] (training sets).
    Exclude,
    /// Every target has a pair of [`HOLDOUT_PAIRS`], named in full by each expression.
    Only,
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipSpec {
    /// Number of clips.
    pub clips: usize,
    /// Frames per clip.
    pub frames: usize,
    /// Frame width in pixels.
    pub width: usize,
    /// Frame height in pixels.
    pub height: usize,
    /// Seed of everything.
    pub seed: u64,
    /// Fewest objects per clip (at least 2).
    pub min_objects: usize,
    /// Most objects per clip (at most 4).
    pub max_objects: usize,
    /// Most expressions written per object.
    pub expressions_per_object: usize,
    /// Held-out pairs policy.
    pub holdout: Holdout,
    /// Split folder name.
    pub split: String,
}

impl Default for ClipSpec {
    fn default() -> Self {
        Self {
            clips: 4,
            frames: 8,
            width: 160,
            height: 96,
            seed: 0,
            min_objects: 2,
            max_objects: 4,
            expressions_per_object: 2,
            holdout: Holdout::None,
            split: "train".into(),
        }
    }
}

/// One object of a clip.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Palette index in the annotations (1-based).
    pub id: u8,
    /// Colour.
    pub colour: Colour,
    /// Shape.
    pub shape: Shape,
    /// Size.
    pub size: Size,
    /// Motion.
    pub motion: Motion,
    /// Centre in the first frame (pixels).
    pub start: (f32, f32),
    /// Displacement per frame (pixels).
    pub velocity: (f32, f32),
    /// Half-extent in pixels.
    pub radius: f32,
    /// Drawing order: larger is nearer (drawn later).
    pub depth: usize,
    /// Small brightness offset of its colour.
    pub shade: i16,
}

impl Object {
    /// Centre in frame `t`.
    pub fn centre(&self, t: usize) -> (f32, f32) {
        (
            self.start.0 + self.velocity.0 * t as f32,
            self.start.1 + self.velocity.1 * t as f32,
        )
    }

    /// Mean centre over `frames` frames.
    pub fn mean_centre(&self, frames: usize) -> (f32, f32) {
        self.centre(0).lerp(self.centre(frames.saturating_sub(1)))
    }

    /// Whether pixel centre (x + 0.5, y + 0.5) lies inside the object in frame `t`.
    pub fn covers(&self, x: usize, y: usize, t: usize) -> bool {
        let (cx, cy) = self.centre(t);
        let (px, py) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
        let r = self.radius;
        match self.shape {
            Shape::Circle => px * px + py * py <= r * r,
            Shape::Square => px.abs() <= 0.85 * r && py.abs() <= 0.85 * r,
            Shape::Triangle => {
                // apex (0, -r), base from (-r, r) to (r, r)
                if !(-r..=r).contains(&py) {
                    return false;
                }
                let half = (py + r) / 2.0; // half-width at this height
                px.abs() <= half
            }
        }
    }
}

trait Lerp {
    fn lerp(self, other: Self) -> Self;
}

impl Lerp for (f32, f32) {
    fn lerp(self, o: Self) -> Self {
        ((self.0 + o.0) / 2.0, (self.1 + o.1) / 2.0)
    }
}

/// The attributes an expression names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Query {
    /// Size word.
    pub size: Option<Size>,
    /// Colour word.
    pub colour: Option<Colour>,
    /// Shape word.
    pub shape: Option<Shape>,
    /// Motion words.
    pub motion: Option<Motion>,
    /// Position words.
    pub position: Option<Position>,
}

impl Query {
    /// Whether it names nothing.
    pub fn is_empty(&self) -> bool {
        *self == Query::default()
    }

    /// Number of attributes named.
    pub fn len(&self) -> usize {
        self.size.is_some() as usize
            + self.colour.is_some() as usize
            + self.shape.is_some() as usize
            + self.motion.is_some() as usize
            + self.position.is_some() as usize
    }

    /// The expression text; `synonym` picks among the shape's words.
    pub fn text(&self, synonym: usize) -> String {
        let mut w: Vec<&str> = vec!["the"];
        if let Some(s) = self.size {
            w.push(s.word());
        }
        if let Some(c) = self.colour {
            w.push(c.word());
        }
        match self.shape {
            Some(s) => w.push(s.words()[synonym % s.words().len()]),
            None => w.push("object"),
        }
        if let Some(m) = self.motion {
            w.push(m.words());
        }
        if let Some(p) = self.position {
            w.push(p.words());
        }
        w.join(" ")
    }

    /// Parses an expression of the grammar (module docs) back into its attributes.
    pub fn parse(text: &str) -> Option<Query> {
        let mut q = Query::default();
        let mut rest = text.trim().strip_prefix("the ")?.trim().to_string();
        for p in POSITIONS {
            if let Some(r) = rest.strip_suffix(p.words()) {
                q.position = Some(p);
                rest = r.trim().to_string();
                break;
            }
        }
        for m in MOTIONS {
            if let Some(r) = rest.strip_suffix(m.words()) {
                q.motion = Some(m);
                rest = r.trim().to_string();
                break;
            }
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        let (noun, adjs) = words.split_last()?;
        if *noun != "object" {
            q.shape = Some(*SHAPES.iter().find(|s| s.words().contains(noun))?);
        }
        for a in adjs {
            if let Some(c) = COLOURS.iter().find(|c| c.word() == *a) {
                if q.colour.replace(*c).is_some() {
                    return None;
                }
            } else if let Some(s) = [Size::Big, Size::Small].iter().find(|s| s.word() == *a) {
                if q.size.replace(*s).is_some() {
                    return None;
                }
            } else {
                return None;
            }
        }
        (!q.is_empty()).then_some(q)
    }

    /// The objects it refers to (module docs, "Expression grammar"); `frames` is the clip length.
    pub fn referents(
        &self,
        objects: &[Object],
        frames: usize,
        width: usize,
        height: usize,
    ) -> Vec<u8> {
        let cands: Vec<&Object> = objects
            .iter()
            .filter(|o| {
                self.size.is_none_or(|s| o.size == s)
                    && self.colour.is_none_or(|c| o.colour == c)
                    && self.shape.is_none_or(|s| o.shape == s)
                    && self.motion.is_none_or(|m| o.motion == m)
            })
            .collect();
        let Some(p) = self.position else {
            return cands.iter().map(|o| o.id).collect();
        };
        // Signed coordinate that grows towards the named side, and the frame extent along it.
        let key = |o: &Object| {
            let (x, y) = o.mean_centre(frames);
            match p {
                Position::Left => -x,
                Position::Right => x,
                Position::Top => -y,
                Position::Bottom => y,
            }
        };
        let extent = match p {
            Position::Left | Position::Right => width as f32,
            _ => height as f32,
        };
        match cands.len() {
            0 => vec![],
            1 => {
                // key is x (or y) for right/bottom and -x (or -y) for left/top
                let v = key(cands[0]);
                let inside = if v >= 0.0 {
                    v > 0.6 * extent
                } else {
                    -v < 0.4 * extent
                };
                if inside {
                    vec![cands[0].id]
                } else {
                    vec![]
                }
            }
            _ => {
                let mut keys: Vec<(f32, u8)> = cands.iter().map(|o| (key(o), o.id)).collect();
                keys.sort_by(|a, b| b.0.total_cmp(&a.0));
                if keys[0].0 - keys[1].0 >= 0.2 * extent {
                    vec![keys[0].1]
                } else {
                    vec![]
                }
            }
        }
    }
}

/// One generated clip: objects and expressions `(text, object id)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    /// Video folder name.
    pub name: String,
    /// Objects, id order.
    pub objects: Vec<Object>,
    /// Expressions and their target object id.
    pub expressions: Vec<(String, u8)>,
    /// Background texture, RGB row-major.
    pub background: Vec<[u8; 3]>,
}

/// SplitMix64: small, seedable, and identical on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }

    /// One element of a slice.
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            xs.swap(i, self.below(i + 1));
        }
    }
}

fn check(spec: &ClipSpec) -> Result<()> {
    let bad = |m: String| Err(Error::Eval(format!("synthetic clips: {m}")));
    if spec.clips == 0 || spec.frames == 0 {
        return bad("need at least one clip and one frame".into());
    }
    if spec.width < 32 || spec.height < 32 {
        return bad(format!(
            "frames of {}x{} are too small (at least 32x32)",
            spec.width, spec.height
        ));
    }
    if spec.min_objects < 2 || spec.max_objects > 4 || spec.min_objects > spec.max_objects {
        return bad(format!(
            "objects per clip must satisfy 2 <= min <= max <= 4 (got {}..={})",
            spec.min_objects, spec.max_objects
        ));
    }
    if spec.expressions_per_object == 0 {
        return bad("expressions_per_object must be at least 1".into());
    }
    super::super::dataset::check_component("split", &spec.split)
}

fn is_holdout(c: Colour, s: Shape) -> bool {
    HOLDOUT_PAIRS.contains(&(c, s))
}

fn draw_object(rng: &mut Rng, spec: &ClipSpec, id: u8, force_holdout: bool) -> Object {
    let (colour, shape) = loop {
        let c = rng.pick(&COLOURS);
        let s = rng.pick(&SHAPES);
        let ok = match spec.holdout {
            Holdout::None => true,
            Holdout::Exclude => !is_holdout(c, s),
            Holdout::Only => !force_holdout || is_holdout(c, s),
        };
        if ok {
            break (c, s);
        }
    };
    let size = rng.pick(&[Size::Big, Size::Small]);
    let motion = rng.pick(&MOTIONS);
    let (w, h) = (spec.width as f32, spec.height as f32);
    let radius = size.half_extent() * w.min(h);
    let (dx, dy) = motion.dir();
    let travel = (0.35 * w * dx, 0.35 * h * dy);
    let steps = spec.frames.saturating_sub(1).max(1) as f32;
    let velocity = (travel.0 / steps, travel.1 / steps);
    // The start is drawn so that both ends of the path stay inside the frame.
    let m = radius + 1.0;
    let span = |len: f32, d: f32| {
        let lo = m - d.min(0.0);
        let hi = len - m - d.max(0.0);
        (lo, hi.max(lo + 1e-3))
    };
    let (xl, xh) = span(w, travel.0);
    let (yl, yh) = span(h, travel.1);
    Object {
        id,
        colour,
        shape,
        size,
        motion,
        start: (rng.range(xl, xh), rng.range(yl, yh)),
        velocity,
        radius,
        depth: 0,
        shade: rng.below(31) as i16 - 15,
    }
}

/// Every attribute combination naming `o` (its own values), with each position word.
fn queries_for(o: &Object) -> Vec<Query> {
    let mut out = Vec::new();
    for bits in 1u32..16 {
        let base = Query {
            size: (bits & 1 != 0).then_some(o.size),
            colour: (bits & 2 != 0).then_some(o.colour),
            shape: (bits & 4 != 0).then_some(o.shape),
            motion: (bits & 8 != 0).then_some(o.motion),
            position: None,
        };
        out.push(base);
    }
    for bits in 0u32..16 {
        for p in POSITIONS {
            out.push(Query {
                size: (bits & 1 != 0).then_some(o.size),
                colour: (bits & 2 != 0).then_some(o.colour),
                shape: (bits & 4 != 0).then_some(o.shape),
                motion: (bits & 8 != 0).then_some(o.motion),
                position: Some(p),
            });
        }
    }
    out
}

fn texture(rng: &mut Rng, w: usize, h: usize) -> Vec<[u8; 3]> {
    // Two muted tones (low saturation, mid value).
    let tone = |rng: &mut Rng| {
        let v = rng.range(55.0, 150.0);
        let t = [
            rng.range(-18.0, 18.0),
            rng.range(-18.0, 18.0),
            rng.range(-18.0, 18.0),
        ];
        [v + t[0], v + t[1], v + t[2]]
    };
    let a = tone(rng);
    let b = tone(rng);
    let kind = rng.below(3);
    let cell = rng.range(6.0, 20.0);
    let angle = rng.range(0.0, std::f32::consts::PI);
    let (ca, sa) = (angle.cos(), angle.sin());
    // Blotches: a coarse random grid, bilinearly interpolated.
    let gw = w / 12 + 2;
    let gh = h / 12 + 2;
    let grid: Vec<f32> = (0..gw * gh).map(|_| rng.range(0.0, 1.0)).collect();
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            let mix = match kind {
                0 => (((x as f32 / cell) as usize + (y as f32 / cell) as usize) % 2) as f32,
                1 => {
                    let u = (x as f32 * ca + y as f32 * sa) / cell;
                    (u.floor() as i64).rem_euclid(2) as f32
                }
                _ => {
                    let (gx, gy) = (x as f32 / 12.0, y as f32 / 12.0);
                    let (ix, iy) = (gx as usize, gy as usize);
                    let (fx, fy) = (gx - ix as f32, gy - iy as f32);
                    let g = |i: usize, j: usize| grid[j.min(gh - 1) * gw + i.min(gw - 1)];
                    let top = g(ix, iy) * (1.0 - fx) + g(ix + 1, iy) * fx;
                    let bot = g(ix, iy + 1) * (1.0 - fx) + g(ix + 1, iy + 1) * fx;
                    top * (1.0 - fy) + bot * fy
                }
            };
            let noise = rng.range(-12.0, 12.0);
            let px = [0, 1, 2]
                .map(|c| (a[c] * (1.0 - mix) + b[c] * mix + noise).clamp(0.0, 255.0) as u8);
            out.push(px);
        }
    }
    out
}

/// Whether every object shows at least [`MIN_VISIBLE`] of its own area in every frame (occlusion
/// is partial, never total).
fn all_visible(spec: &ClipSpec, objects: &[Object]) -> bool {
    (0..spec.frames).all(|t| {
        let mut own = vec![0usize; objects.len()];
        let mut shown = vec![0usize; objects.len()];
        for y in 0..spec.height {
            for x in 0..spec.width {
                let mut front: Option<usize> = None;
                for (k, o) in objects.iter().enumerate() {
                    if o.covers(x, y, t) {
                        own[k] += 1;
                        if front.is_none_or(|f| objects[f].depth < o.depth) {
                            front = Some(k);
                        }
                    }
                }
                if let Some(f) = front {
                    shown[f] += 1;
                }
            }
        }
        own.iter()
            .zip(&shown)
            .all(|(&a, &s)| a > 0 && s as f32 >= MIN_VISIBLE * a as f32)
    })
}

/// Smallest visible fraction of an object's area in any frame.
pub const MIN_VISIBLE: f32 = 0.3;

/// Draws clip `index` of `spec` (objects, expressions, background). Clips whose objects leave
/// some object without any unambiguous expression are redrawn, so every clip has expressions.
pub fn make_clip(spec: &ClipSpec, index: usize) -> Result<Clip> {
    let mut rng = Rng::new(
        spec.seed
            .wrapping_mul(0x2545_F491_4F6C_DD1D)
            .wrapping_add(index as u64 + 1),
    );
    for _attempt in 0..200 {
        let n = spec.min_objects + rng.below(spec.max_objects - spec.min_objects + 1);
        let mut objects: Vec<Object> = (0..n)
            .map(|k| draw_object(&mut rng, spec, (k + 1) as u8, k == 0))
            .collect();
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        for (depth, &k) in order.iter().enumerate() {
            objects[k].depth = depth;
        }
        let mut expressions = Vec::new();
        for o in &objects {
            if spec.holdout == Holdout::Only && !is_holdout(o.colour, o.shape) {
                continue;
            }
            let mut good: Vec<Query> = queries_for(o)
                .into_iter()
                .filter(|q| {
                    spec.holdout != Holdout::Only || (q.colour.is_some() && q.shape.is_some())
                })
                .filter(|q| q.referents(&objects, spec.frames, spec.width, spec.height) == [o.id])
                .collect();
            // Draw lengths (number of attributes) uniformly among those available, then one
            // expression of that length, so that short and long expressions are equally common.
            rng.shuffle(&mut good);
            for _ in 0..spec.expressions_per_object {
                let mut lens: Vec<usize> = good.iter().map(Query::len).collect();
                lens.sort_unstable();
                lens.dedup();
                if lens.is_empty() {
                    break;
                }
                let len = rng.pick(&lens);
                let i = good
                    .iter()
                    .position(|q| q.len() == len)
                    .expect("a query of that length");
                let q = good.remove(i);
                expressions.push((q.text(rng.below(2)), o.id));
            }
        }
        if !all_visible(spec, &objects) {
            continue;
        }
        let every_target_named = objects
            .iter()
            .filter(|o| spec.holdout != Holdout::Only || is_holdout(o.colour, o.shape))
            .all(|o| expressions.iter().any(|e| e.1 == o.id));
        if !expressions.is_empty() && every_target_named {
            let background = texture(&mut rng, spec.width, spec.height);
            return Ok(Clip {
                name: format!("clip{index:05}"),
                objects,
                expressions,
                background,
            });
        }
    }
    Err(Error::Eval(format!(
        "synthetic clip {index}: no object layout with unambiguous expressions in 200 draws"
    )))
}

/// Frame `t` of a clip: RGB pixels and the label map (visible object id per pixel, 0 background).
pub fn render(spec: &ClipSpec, clip: &Clip, t: usize) -> (Vec<[u8; 3]>, Vec<u8>) {
    let mut rgb = clip.background.clone();
    let mut labels = vec![0u8; spec.width * spec.height];
    let mut order: Vec<&Object> = clip.objects.iter().collect();
    order.sort_by_key(|o| o.depth);
    for o in order {
        let base = o
            .colour
            .rgb()
            .map(|c| (c as i16 + o.shade).clamp(0, 255) as u8);
        let (cx, cy) = o.centre(t);
        let r = o.radius + 1.0;
        let x0 = (cx - r).floor().max(0.0) as usize;
        let y0 = (cy - r).floor().max(0.0) as usize;
        let x1 = ((cx + r).ceil() as usize).min(spec.width);
        let y1 = ((cy + r).ceil() as usize).min(spec.height);
        for y in y0..y1 {
            for x in x0..x1 {
                if o.covers(x, y, t) {
                    let i = y * spec.width + x;
                    rgb[i] = base;
                    labels[i] = o.id;
                }
            }
        }
    }
    (rgb, labels)
}

fn object_json(o: &Object, frames: usize) -> Value {
    let (mx, my) = o.mean_centre(frames);
    json!({
        "colour": o.colour.word(),
        "shape": o.shape.words()[0],
        "size": o.size.word(),
        "motion": o.motion.words(),
        "depth": o.depth,
        "mean_centre": [mx, my],
        "radius": o.radius,
    })
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::Eval(e.to_string()))?;
    std::fs::write(path, s).map_err(|e| Error::io(path, e))
}

/// What [`write_clips`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Clips.
    pub clips: usize,
    /// Expressions over all clips.
    pub expressions: usize,
    /// Objects over all clips.
    pub objects: usize,
}

/// Generates `spec` under `root` (module docs, "Layout").
pub fn write_clips(root: &Path, spec: &ClipSpec) -> Result<Written> {
    check(spec)?;
    let split = root.join(&spec.split);
    let mut videos = Map::new();
    let mut info = Map::new();
    let mut written = Written {
        clips: 0,
        expressions: 0,
        objects: 0,
    };
    for index in 0..spec.clips {
        let clip = make_clip(spec, index)?;
        let jdir = split.join("JPEGImages").join(&clip.name);
        let adir = split.join("Annotations").join(&clip.name);
        std::fs::create_dir_all(&jdir).map_err(|e| Error::io(&jdir, e))?;
        let mut frames = Vec::with_capacity(spec.frames);
        for t in 0..spec.frames {
            let (rgb, labels) = render(spec, &clip, t);
            let name = format!("{t:05}");
            let img = image::RgbImage::from_raw(
                spec.width as u32,
                spec.height as u32,
                rgb.into_iter().flatten().collect(),
            )
            .expect("width * height pixels");
            let p = jdir.join(format!("{name}.jpg"));
            let mut f =
                std::io::BufWriter::new(std::fs::File::create(&p).map_err(|e| Error::io(&p, e))?);
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut f, 92)
                .encode_image(&img)
                .map_err(|e| Error::Eval(format!("{}: cannot write JPEG: {e}", p.display())))?;
            write_palette_png(
                &adir.join(format!("{name}.png")),
                spec.width,
                spec.height,
                &labels,
            )?;
            frames.push(name);
        }
        let mut exps = Map::new();
        for (i, (text, id)) in clip.expressions.iter().enumerate() {
            exps.insert(
                i.to_string(),
                json!({"exp": text, "obj_id": id.to_string()}),
            );
        }
        videos.insert(
            clip.name.clone(),
            json!({"expressions": exps, "frames": frames}),
        );
        let objs: Map<String, Value> = clip
            .objects
            .iter()
            .map(|o| (o.id.to_string(), object_json(o, spec.frames)))
            .collect();
        info.insert(clip.name.clone(), json!({ "objects": objs }));
        written.clips += 1;
        written.expressions += clip.expressions.len();
        written.objects += clip.objects.len();
    }
    write_json(
        &root
            .join("meta_expressions")
            .join(&spec.split)
            .join("meta_expressions.json"),
        &json!({ "videos": videos }),
    )?;
    let holdout = match spec.holdout {
        Holdout::None => "none",
        Holdout::Exclude => "exclude",
        Holdout::Only => "only",
    };
    let pairs: Vec<String> = HOLDOUT_PAIRS
        .iter()
        .map(|(c, s)| format!("{} {}", c.word(), s.words()[0]))
        .collect();
    write_json(
        &split.join("synth.json"),
        &json!({
            "generator": "referdino synth (src/eval/synth/clips.rs)",
            "seed": spec.seed,
            "clips": spec.clips,
            "frames": spec.frames,
            "width": spec.width,
            "height": spec.height,
            "holdout": holdout,
            "holdout_pairs": pairs,
            "videos": info,
        }),
    )?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{Dataset, DatasetKind};

    fn small(seed: u64, holdout: Holdout) -> ClipSpec {
        ClipSpec {
            clips: 6,
            frames: 4,
            width: 64,
            height: 48,
            seed,
            holdout,
            ..ClipSpec::default()
        }
    }

    #[test]
    fn expressions_parse_back_and_refer_to_one_object() {
        for holdout in [Holdout::None, Holdout::Exclude, Holdout::Only] {
            let spec = small(7, holdout);
            for i in 0..40 {
                let clip = make_clip(&spec, i).unwrap();
                assert!((2..=4).contains(&clip.objects.len()));
                assert!(!clip.expressions.is_empty());
                for (text, id) in &clip.expressions {
                    let q = Query::parse(text).unwrap_or_else(|| panic!("{text:?} does not parse"));
                    assert_eq!(
                        q.referents(&clip.objects, spec.frames, spec.width, spec.height),
                        vec![*id],
                        "{text:?} in {:?}",
                        clip.objects
                    );
                    let o = &clip.objects[*id as usize - 1];
                    match holdout {
                        Holdout::Only => {
                            assert!(is_holdout(o.colour, o.shape), "{text}");
                            assert!(q.colour.is_some() && q.shape.is_some(), "{text}");
                        }
                        Holdout::Exclude => {
                            assert!(clip.objects.iter().all(|o| !is_holdout(o.colour, o.shape)))
                        }
                        Holdout::None => {}
                    }
                }
            }
        }
    }

    #[test]
    fn grammar_examples() {
        let q = Query {
            size: Some(Size::Small),
            colour: Some(Colour::Blue),
            shape: Some(Shape::Square),
            motion: Some(Motion::Left),
            position: None,
        };
        assert_eq!(q.text(0), "the small blue square moving left");
        assert_eq!(Query::parse("the small blue box moving left"), Some(q));
        let p = Query::parse("the object at the top").unwrap();
        assert_eq!(p.position, Some(Position::Top));
        assert_eq!(p.len(), 1);
        assert_eq!(
            Query::parse("the red ball not moving on the right")
                .unwrap()
                .motion,
            Some(Motion::Still)
        );
        assert!(Query::parse("the object").is_none());
        assert!(Query::parse("the red red ball").is_none());
        assert!(Query::parse("a red ball").is_none());
    }

    #[test]
    fn position_needs_a_clear_margin() {
        let spec = small(1, Holdout::None);
        let mut a = draw_object(&mut Rng::new(3), &spec, 1, false);
        a.velocity = (0.0, 0.0);
        a.colour = Colour::Red;
        let mut b = a.clone();
        b.id = 2;
        a.start = (10.0, 20.0);
        b.start = (14.0, 20.0);
        let q = Query {
            colour: Some(Colour::Red),
            position: Some(Position::Left),
            ..Query::default()
        };
        let objs = [a.clone(), b.clone()];
        // 4 px apart in a 64 px frame: ambiguous.
        assert!(q.referents(&objs, 4, 64, 48).is_empty());
        b.start = (50.0, 20.0);
        let objs = [a.clone(), b.clone()];
        assert_eq!(q.referents(&objs, 4, 64, 48), vec![1]);
        let right = Query {
            position: Some(Position::Right),
            ..q
        };
        assert_eq!(right.referents(&objs, 4, 64, 48), vec![2]);
        // One candidate: it must lie in the named outer part of the frame.
        let one = [a.clone()];
        assert_eq!(q.referents(&one, 4, 64, 48), vec![1]);
        assert!(right.referents(&one, 4, 64, 48).is_empty());
    }

    #[test]
    fn same_seed_same_files_and_eval_reads_them() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let spec = ClipSpec {
            split: "valid".into(),
            ..small(11, Holdout::None)
        };
        let w = write_clips(d1.path(), &spec).unwrap();
        write_clips(d2.path(), &spec).unwrap();
        assert_eq!(w.clips, 6);
        for rel in [
            "meta_expressions/valid/meta_expressions.json",
            "valid/JPEGImages/clip00003/00002.jpg",
            "valid/Annotations/clip00005/00003.png",
            "valid/synth.json",
        ] {
            assert_eq!(
                std::fs::read(d1.path().join(rel)).unwrap(),
                std::fs::read(d2.path().join(rel)).unwrap(),
                "{rel}"
            );
        }
        let other = tempfile::tempdir().unwrap();
        write_clips(other.path(), &small(12, Holdout::None)).unwrap();
        assert_ne!(
            std::fs::read(d1.path().join("valid/Annotations/clip00000/00000.png")).unwrap(),
            std::fs::read(other.path().join("train/Annotations/clip00000/00000.png")).unwrap()
        );

        let ds = Dataset::open(DatasetKind::RefYoutubeVos, d1.path(), "valid").unwrap();
        assert_eq!(ds.videos.len(), 6);
        assert_eq!(ds.num_expressions(), w.expressions);
        for v in &ds.videos {
            let frames = ds.load_frames(v).unwrap();
            assert_eq!(frames.len(), 4);
            assert_eq!(frames[0].dimensions(), (64, 48));
            for e in &v.expressions {
                let gt = ds.ground_truth(v, e, 64, 48).unwrap().unwrap();
                // The target is visible in at least one frame, and its colour is where its mask is.
                assert!(gt.iter().any(|m| m.iter().any(|&x| x != 0)), "{}", e.text);
            }
        }
    }

    #[test]
    fn masks_follow_depth_order_and_motion() {
        let spec = small(5, Holdout::None);
        let clip = make_clip(&spec, 0).unwrap();
        for t in 0..spec.frames {
            let (rgb, labels) = render(&spec, &clip, t);
            for y in 0..spec.height {
                for x in 0..spec.width {
                    let i = y * spec.width + x;
                    // The label is the nearest object covering the pixel.
                    let want = clip
                        .objects
                        .iter()
                        .filter(|o| o.covers(x, y, t))
                        .max_by_key(|o| o.depth)
                        .map_or(0, |o| o.id);
                    assert_eq!(labels[i], want);
                    if want != 0 {
                        let o = &clip.objects[want as usize - 1];
                        let c = o
                            .colour
                            .rgb()
                            .map(|c| (c as i16 + o.shade).clamp(0, 255) as u8);
                        assert_eq!(rgb[i], c);
                    }
                }
            }
        }
        for t in 0..spec.frames {
            let (_, labels) = render(&spec, &clip, t);
            for o in &clip.objects {
                let own = (0..spec.width * spec.height)
                    .filter(|i| o.covers(i % spec.width, i / spec.width, t))
                    .count();
                let shown = labels.iter().filter(|&&l| l == o.id).count();
                assert!(shown as f32 >= MIN_VISIBLE * own as f32 && shown > 0);
            }
        }
        for o in &clip.objects {
            let (a, b) = (o.centre(0), o.centre(spec.frames - 1));
            let (dx, dy) = o.motion.dir();
            assert!((b.0 - a.0) * dx >= 0.0 && (b.1 - a.1) * dy >= 0.0);
            if o.motion == Motion::Still {
                assert_eq!(a, b);
            }
            for t in [0, spec.frames - 1] {
                let (cx, cy) = o.centre(t);
                assert!(cx - o.radius >= 0.0 && cx + o.radius <= spec.width as f32);
                assert!(cy - o.radius >= 0.0 && cy + o.radius <= spec.height as f32);
            }
        }
    }
}
