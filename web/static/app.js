(()=>{console.log("x");})();
