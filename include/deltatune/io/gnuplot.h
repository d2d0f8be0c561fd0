// Charts drawn by gnuplot (the real plotting tool, never hand-built SVG):
// a script and its data files in, an SVG document out.
#pragma once

#include <string>
#include <vector>

namespace deltatune::io {

// A data file the script reads by `name` (a plain file name, no directories).
struct PlotData {
  std::string name;
  std::string text;
};

// Runs gnuplot on `script` in a scratch directory holding `data`, with an
// SVG terminal of width x height set first (noenhanced: labels print as
// written); returns the <svg> element, ready to sit inline in an HTML page.
// Every id in it, and every reference to one, is prefixed by `id_prefix`, so
// several charts share a page without their ids colliding. Throws
// deltatune::Error when gnuplot is missing or rejects the script (with its
// first error line).
std::string gnuplot_svg(const std::string& script, const std::vector<PlotData>& data, int width,
                        int height, const std::string& id_prefix);

// `text` as a gnuplot single-quoted string ('' stands for ').
std::string gnuplot_quote(const std::string& text);

}  // namespace deltatune::io
